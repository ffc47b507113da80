"""A request travels gRPC -> Ray Serve -> DiffusionModel -> control plane and back."""

from __future__ import annotations

import hashlib
import io

import grpc
import PIL.Image
import pytest
from grpc_status import rpc_status

from inference.config import ModelConfig
from inference.pricing import generation_cost
from protos.atelier.v1 import control_plane_pb2, inference_pb2

TINY = ModelConfig(name="tiny-sd")


def _generate(inference, operator_metadata, account_id: str, **fields) -> inference_pb2.GenerateResponse:  # type: ignore[no-untyped-def]
    fields.setdefault("prompt", "a lighthouse at dusk")
    fields.setdefault("steps", 4)
    request = inference_pb2.GenerateRequest(account_id=account_id, **fields)
    return inference.Generate(request, metadata=operator_metadata, timeout=120)


class TestGenerate:
    def test_returns_png_stored_by_control_plane_and_charges_documented_cost(
        self, inference, control_plane, operator_metadata, make_account, balance_of
    ) -> None:
        account_id = make_account(10)
        response = _generate(inference, operator_metadata, account_id, seed=7, width=64, height=64, steps=20)

        assert len(response.images) == 1
        image = response.images[0]
        decoded = PIL.Image.open(io.BytesIO(image.png))
        assert decoded.format == "PNG" and decoded.size == (64, 64)
        assert image.sha256 == hashlib.sha256(image.png).hexdigest()
        expected_cost = generation_cost(TINY, width=64, height=64, steps=20, num_images=1)
        assert response.credits_charged == expected_cost
        balance = balance_of(account_id)
        assert (balance.total, balance.held, balance.available) == (10 - expected_cost, 0, 10 - expected_cost)
        stored = control_plane.GetContent(
            control_plane_pb2.GetContentRequest(content_id=image.content_id, include_data=True),
            metadata=operator_metadata,
        )
        assert stored.data == image.png
        assert stored.content.account_id == account_id
        assert stored.content.parameters.seed == 7
        assert response.timings.total_ms >= response.timings.denoise_ms > 0

    def test_same_seed_gives_same_image_and_other_seed_differs(
        self, inference, operator_metadata, make_account
    ) -> None:
        account_id = make_account(10)
        first = _generate(inference, operator_metadata, account_id, seed=42).images[0]
        again = _generate(inference, operator_metadata, account_id, seed=42).images[0]
        other = _generate(inference, operator_metadata, account_id, seed=43).images[0]
        # The same pixels; the files differ, since each carries its own signed manifest (content id, time).
        assert _pixels(first.png) == _pixels(again.png)
        assert first.sha256 != again.sha256
        assert _pixels(first.png) != _pixels(other.png)
        assert first.content_id != again.content_id

    def test_several_images_use_consecutive_seeds_and_cost_per_image(
        self, inference, operator_metadata, make_account, balance_of
    ) -> None:
        account_id = make_account(10)
        response = _generate(inference, operator_metadata, account_id, seed=100, num_images=3)
        assert [image.seed for image in response.images] == [100, 101, 102]
        assert len({image.content_id for image in response.images}) == 3
        assert balance_of(account_id).total == 10 - generation_cost(TINY, width=64, height=64, steps=4, num_images=3)

    def test_stream_reports_every_step_then_the_result(self, inference, operator_metadata, make_account) -> None:
        account_id = make_account(10)
        request = inference_pb2.GenerateRequest(account_id=account_id, prompt="a fox", steps=6, seed=1)
        messages = list(inference.GenerateStream(request, metadata=operator_metadata, timeout=120))
        steps = [m.progress.step for m in messages if m.HasField("progress")]
        assert steps == [1, 2, 3, 4, 5, 6]
        assert all(m.progress.total_steps == 6 for m in messages if m.HasField("progress"))
        assert messages[-1].HasField("result") and len(messages[-1].result.images) == 1

    def test_list_models_shows_the_default_model(self, inference) -> None:
        models = inference.ListModels(inference_pb2.ListModelsRequest(), timeout=30).models
        assert [(m.name, m.backend, m.is_default) for m in models] == [("tiny-sd", "eager", True)]


LONG_PROMPT = "x" * 10_000


class TestBadInputChargesNothing:
    @pytest.mark.parametrize(
        ("fields", "code", "mentions"),
        [
            ({"model": "no-such-model"}, grpc.StatusCode.NOT_FOUND, "no-such-model"),
            ({"prompt": ""}, grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
            ({"prompt": "   "}, grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
            ({"prompt": LONG_PROMPT}, grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
            ({"width": 0}, grpc.StatusCode.INVALID_ARGUMENT, "width"),
            ({"width": 65}, grpc.StatusCode.INVALID_ARGUMENT, "width"),
            ({"height": 4096}, grpc.StatusCode.INVALID_ARGUMENT, "height"),
            ({"steps": 10_000}, grpc.StatusCode.INVALID_ARGUMENT, "steps"),
            ({"steps": 0}, grpc.StatusCode.INVALID_ARGUMENT, "steps"),
            ({"num_images": 9}, grpc.StatusCode.INVALID_ARGUMENT, "num_images"),
            ({"guidance_scale": float("nan")}, grpc.StatusCode.INVALID_ARGUMENT, "guidance_scale"),
        ],
    )
    def test_invalid_request_gets_its_code(
        self, inference, operator_metadata, make_account, balance_of, fields, code, mentions
    ) -> None:
        account_id = make_account(10)
        with pytest.raises(grpc.RpcError) as raised:
            _generate(inference, operator_metadata, account_id, **fields)
        _assert_clean_error(raised.value, code, mentions)
        assert balance_of(account_id).total == 10

    def test_bad_api_key_is_unauthenticated(self, inference, make_account, balance_of) -> None:
        account_id = make_account(10)
        with pytest.raises(grpc.RpcError) as raised:
            _generate(inference, (("authorization", "Bearer atk_nope_nope"),), account_id)
        _assert_clean_error(raised.value, grpc.StatusCode.UNAUTHENTICATED, "key")
        assert balance_of(account_id).total == 10

    def test_missing_api_key_is_unauthenticated(self, inference, make_account) -> None:
        with pytest.raises(grpc.RpcError) as raised:
            _generate(inference, (), make_account(10))
        _assert_clean_error(raised.value, grpc.StatusCode.UNAUTHENTICATED, "authorization")

    def test_unknown_account_is_not_found(self, inference, operator_metadata) -> None:
        with pytest.raises(grpc.RpcError) as raised:
            _generate(inference, operator_metadata, "00000000-0000-4000-8000-000000000000")
        _assert_clean_error(raised.value, grpc.StatusCode.NOT_FOUND, "account")

    def test_account_without_credits_is_resource_exhausted_with_reason(
        self, inference, operator_metadata, make_account, balance_of
    ) -> None:
        account_id = make_account(0)
        with pytest.raises(grpc.RpcError) as raised:
            _generate(inference, operator_metadata, account_id)
        _assert_clean_error(raised.value, grpc.StatusCode.RESOURCE_EXHAUSTED, "credit")
        status = rpc_status.from_call(raised.value)
        assert status is not None, "rich status details (ErrorInfo) travel through the gateway"
        assert any(b"INSUFFICIENT_CREDITS" in detail.value for detail in status.details)
        balance = balance_of(account_id)
        assert (balance.total, balance.held) == (0, 0)


def _assert_clean_error(error: grpc.RpcError, code: grpc.StatusCode, mentions: str) -> None:
    details = error.details() or ""
    assert error.code() == code, details
    assert mentions in details.lower() or mentions in details
    assert "\n" not in details and "Traceback" not in details and len(details) < 300


def _pixels(png: bytes) -> bytes:
    return PIL.Image.open(io.BytesIO(png)).convert("RGB").tobytes()
