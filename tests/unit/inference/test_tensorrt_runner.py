"""The TensorRT engine runner, through a fake engine behind TensorRT's Python interface (no GPU here):
shapes past every profile are a clear error, buffers are allocated once per shape, outputs are copies."""

from __future__ import annotations

import ctypes
import enum
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from inference.backends.tensorrt import EngineRunner


class _Mode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


class _DataType(enum.Enum):
    FLOAT = 1
    HALF = 2
    BF16 = 3
    INT64 = 4


_TRT = SimpleNamespace(TensorIOMode=_Mode, DataType=_DataType)


def _view(address: int, shape: tuple[int, ...]) -> np.ndarray:
    # Host memory behind a bound address, as the engine would read and write it on the device.
    count = int(np.prod(shape))
    return np.ctypeslib.as_array(ctypes.cast(address, ctypes.POINTER(ctypes.c_float)), (count,)).reshape(shape)


class FakeContext:
    """An execution context: shapes are refused past the profile as TensorRT does (returns False)."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.profile = 0
        self.launches: list[int] = []

    def set_optimization_profile_async(self, profile: int, stream: int) -> bool:
        self.profile = profile
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        smallest, _, largest = self.engine.get_tensor_profile_shape(name, self.profile)
        if not all(lo <= dim <= hi for dim, lo, hi in zip(shape, smallest, largest, strict=True)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes["sample"]

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream: int) -> bool:
        # output = 2 * sample, computed from the bound memory.
        shape = self.shapes["sample"]
        _view(self.addresses["output"], shape)[...] = 2 * _view(self.addresses["sample"], shape)
        self.launches.append(stream)
        return True


class FakeEngine:
    """A deserialised engine with input ``sample`` and output ``output``, one profile per batch range."""

    def __init__(self, profiles: list[tuple[int, int]]) -> None:
        self.profiles = profiles
        self.contexts: list[FakeContext] = []
        self.num_io_tensors = 2
        self.num_optimization_profiles = len(profiles)

    def get_tensor_name(self, index: int) -> str:
        return ("sample", "output")[index]

    def get_tensor_mode(self, name: str) -> _Mode:
        return _Mode.INPUT if name == "sample" else _Mode.OUTPUT

    def get_tensor_dtype(self, name: str) -> _DataType:
        return _DataType.FLOAT

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        lo, hi = self.profiles[profile]
        return [(lo, 4, 8, 8), (hi, 4, 8, 8), (hi, 4, 8, 8)]

    def create_execution_context(self) -> FakeContext:
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


def _runner(engine: FakeEngine) -> EngineRunner:
    return EngineRunner(_TRT, engine, "unet", torch.device("cpu"), stream=None)


def test_a_batch_past_every_profile_is_a_clear_error_naming_the_shapes_it_takes() -> None:
    runner = _runner(FakeEngine([(1, 2), (4, 4)]))
    with pytest.raises(ValueError) as raised:
        runner({"sample": torch.ones(8, 4, 8, 8)})
    message = str(raised.value)
    assert "(8, 4, 8, 8)" in message and "(1, 4, 8, 8)..(2, 4, 8, 8)" in message
    assert "atelier models build" in message


def test_each_shape_runs_on_the_profile_that_holds_it_with_buffers_allocated_once() -> None:
    engine = FakeEngine([(1, 2), (4, 4)])
    runner = _runner(engine)
    first = runner({"sample": torch.full((2, 4, 8, 8), 1.0)})
    second = runner({"sample": torch.full((2, 4, 8, 8), 3.0)})
    assert torch.equal(first, torch.full((2, 4, 8, 8), 2.0)), "outputs are copies, not the reused buffer"
    assert torch.equal(second, torch.full((2, 4, 8, 8), 6.0))
    runner({"sample": torch.ones(4, 4, 8, 8)})
    assert [c.profile for c in engine.contexts] == [0, 1], "one context per profile, made on first use"
    assert [len(c.launches) for c in engine.contexts] == [2, 1]
    # The same shape's second call reused the buffers bound on its first.
    assert len({c.addresses["sample"] for c in engine.contexts}) == 2
