"""On-disk cache of compiled artefacts (ONNX exports, TensorRT engines, inductor caches).

An artefact lives in a directory named after everything that decides its content: the model's weights
hash, the profile it was built for, the device model and the library versions. The first replica to need
one builds it under a file lock into a staging directory that is renamed into place; every other replica,
on this machine or sharing the directory, waits for the lock and reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from inference._locking import exclusive_lock

logger = logging.getLogger(__name__)

_COMPLETE = "artefact.json"


def weights_hash(*modules: torch.nn.Module) -> str:
    """SHA-256 (hex, 16 characters) of the modules' parameter and buffer names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            flat = tensor.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
            if flat.numel():
                digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def device_model(device: torch.device) -> str:
    """A name of the device's hardware model (``cpu``, ``NVIDIA H100 80GB HBM3``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def cached_artifact(root: Path, kind: str, key: Mapping[str, str | int], build: Callable[[Path], None]) -> Path:
    """Returns the directory of the artefact `key` describes, calling `build(staging_dir)` once to make it.

    Args:
        root: Cache root, shared by every replica that should reuse the artefact.
        kind: Short name of the artefact family (``onnx``, ``tensorrt``), the directory's prefix.
        key: Everything the artefact depends on; written beside it as ``artefact.json``.
        build: Writes the artefact's files into the directory it is given.

    Raises:
        OSError: The cache root cannot be written.
    """
    key_json = json.dumps(dict(key), sort_keys=True)
    name = f"{kind}-{hashlib.sha256(key_json.encode()).hexdigest()[:16]}"
    target = root / name
    if (target / _COMPLETE).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(root / f".{name}.lock"):
        if (target / _COMPLETE).is_file():  # built by another process while this one waited
            return target
        if target.exists():
            shutil.rmtree(target)
        # Replicas should find it built by `atelier models build`; building here works but delays the start.
        logger.warning("artefact_missing kind=%s dir=%s building_now=true hint='atelier models build'", kind, target)
        started = time.perf_counter()
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        try:
            build(staging)
            (staging / _COMPLETE).write_text(key_json + "\n")
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        logger.info("artefact_built kind=%s dir=%s seconds=%.1f", kind, target, time.perf_counter() - started)
    return target
