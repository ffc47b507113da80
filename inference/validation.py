"""Turns a `GenerateRequest` into validated generation parameters and a price.

Every rule here is what the proto documents; a violation raises `RequestError` with
INVALID_ARGUMENT (or NOT_FOUND for a model that is not served, FAILED_PRECONDITION for an edit
of a model whose backend cannot edit) naming the field.

An edit's images are decoded and fitted here (see `inference.uploads`), so garbage is refused
before any credit is reserved; that takes milliseconds to a few hundred for a large JPEG, so the
gateway runs validation of a request with images off its event loop.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass

import grpc

from inference.config import (
    MAX_GUIDANCE_SCALE,
    MAX_IMAGES_PER_REQUEST,
    MAX_PROMPT_CHARS,
    MAX_STEPS,
    SIZE_MULTIPLE,
    ModelConfig,
    ServeConfig,
)
from inference.errors import RequestError
from inference.generation import GenerationParams, ImageEdit, denoising_steps
from inference.pricing import generation_cost
from inference.uploads import UploadError, decode_mask, decode_upload, fit_edit_images
from protos.atelier.v1 import inference_pb2

# Random seeds stay below 2**63 so seed + image index never overflows uint64.
_RANDOM_SEED_BITS = 63
_MAX_SEED = 2**64 - 1
DEFAULT_STRENGTH = 0.75
# float fields arrive as float32: 0.7 becomes 0.69999999; rounding restores what the caller wrote, so
# int(steps * strength) counts the steps they expect (and pricing and the pipeline agree on it).
_STRENGTH_DIGITS = 6
_MAX_IDEMPOTENCY_KEY_CHARS = 128


@dataclass(frozen=True)
class ValidatedRequest:
    """A generate request with every default resolved."""

    account_id: str
    model: ModelConfig
    params: GenerationParams
    cost: int
    """Credits this request costs (see `inference.pricing`)."""
    preview_every: int = 0
    """Streamed progress carries a preview every this many steps; 0 for none."""
    idempotency_key: str | None = None
    """The caller's idempotency key, when it sent one."""
    request_fingerprint: bytes = b""
    """SHA-256 of the request as sent, without its idempotency key; a retry must match it."""


def validate_generate_request(request: inference_pb2.GenerateRequest, config: ServeConfig) -> ValidatedRequest:
    """Checks `request` against the proto's documented ranges and resolves defaults.

    Raises:
        RequestError: INVALID_ARGUMENT naming the offending field, or NOT_FOUND for an
            unknown model.
    """
    account_id = _validate_uuid("account_id", request.account_id)
    model = config.model(request.model) if request.model else config.default_model
    if model is None:
        served = ", ".join(m.name for m in config.models)
        raise RequestError(
            grpc.StatusCode.NOT_FOUND, f"model {request.model[:64]!r} is not served; served models: {served}"
        )

    prompt = request.prompt.strip()
    if not prompt:
        raise _invalid("prompt", "must not be empty")
    if len(request.prompt) > MAX_PROMPT_CHARS:
        raise _invalid("prompt", f"must be at most {MAX_PROMPT_CHARS} characters, got {len(request.prompt)}")
    if len(request.negative_prompt) > MAX_PROMPT_CHARS:
        raise _invalid("negative_prompt", f"must be at most {MAX_PROMPT_CHARS} characters")

    width = _validate_size("width", request.width if request.HasField("width") else model.default_width, model)
    height = _validate_size("height", request.height if request.HasField("height") else model.default_height, model)
    steps = request.steps if request.HasField("steps") else model.default_steps
    if not 1 <= steps <= model.max_steps:
        raise _invalid("steps", f"must lie within [1, {model.max_steps}] for model {model.name!r}, got {steps}")
    guidance = request.guidance_scale if request.HasField("guidance_scale") else model.default_guidance_scale
    if not 0.0 <= guidance <= MAX_GUIDANCE_SCALE:  # also rejects NaN
        raise _invalid("guidance_scale", f"must lie within [0, {MAX_GUIDANCE_SCALE:g}], got {guidance}")
    num_images = request.num_images if request.HasField("num_images") else 1
    if not 1 <= num_images <= MAX_IMAGES_PER_REQUEST:
        raise _invalid("num_images", f"must lie within [1, {MAX_IMAGES_PER_REQUEST}], got {num_images}")
    seed = request.seed if request.HasField("seed") else secrets.randbits(_RANDOM_SEED_BITS)
    if seed + num_images - 1 > _MAX_SEED:
        raise _invalid("seed", f"seed + num_images - 1 must fit in 64 bits, got seed {seed}")

    preview_every = request.preview_every_n_steps if request.HasField("preview_every_n_steps") else 0
    if preview_every > MAX_STEPS:
        raise _invalid("preview_every_n_steps", f"must lie within [0, {MAX_STEPS}], got {preview_every}")

    params = GenerationParams(
        prompt=prompt,
        negative_prompt=request.negative_prompt,
        width=width,
        height=height,
        steps=steps,
        guidance_scale=guidance,
        seed=seed,
        num_images=num_images,
        edit=_validate_edit(request, model, width=width, height=height, steps=steps),
    )
    # Edits are priced by the denoising steps they actually run (see inference.pricing).
    cost = generation_cost(model, width=width, height=height, steps=params.denoising_steps, num_images=num_images)
    idempotency_key = _validate_idempotency_key(request)
    return ValidatedRequest(
        account_id=account_id,
        model=model,
        params=params,
        cost=cost,
        preview_every=preview_every,
        idempotency_key=idempotency_key,
        request_fingerprint=_fingerprint(request) if idempotency_key is not None else b"",
    )


def _validate_idempotency_key(request: inference_pb2.GenerateRequest) -> str | None:
    if not request.HasField("idempotency_key"):
        return None
    key = request.idempotency_key
    if not 1 <= len(key) <= _MAX_IDEMPOTENCY_KEY_CHARS or not all(" " <= c <= "~" for c in key):
        raise _invalid("idempotency_key", f"must be 1..{_MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters")
    return key


def _fingerprint(request: inference_pb2.GenerateRequest) -> bytes:
    # The request as the caller sent it (an absent seed stays absent, so a retry matches),
    # minus the key itself; deterministic serialisation makes equal messages equal bytes.
    unkeyed = inference_pb2.GenerateRequest()
    unkeyed.CopyFrom(request)
    unkeyed.ClearField("idempotency_key")
    return hashlib.sha256(unkeyed.SerializeToString(deterministic=True)).digest()


def _validate_edit(
    request: inference_pb2.GenerateRequest, model: ModelConfig, *, width: int, height: int, steps: int
) -> ImageEdit | None:
    """The request's edit (init image, strength, mask), or None for text-to-image."""
    if not request.init_image:
        if request.HasField("strength"):
            raise _invalid("strength", "is only valid with init_image; send init_image or leave strength out")
        if request.mask_image:
            raise _invalid("mask_image", "is only valid with init_image; send the image to inpaint as init_image")
        return None
    if not model.supports_editing:
        raise RequestError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"init_image: model {model.name!r} runs on backend {model.backend!r}, which does not support editing; "
            "use a model whose ListModels entry has supports_editing",
        )
    strength = round(request.strength, _STRENGTH_DIGITS) if request.HasField("strength") else DEFAULT_STRENGTH
    if not 0.0 < strength <= 1.0:  # also rejects NaN
        raise _invalid("strength", f"must lie within (0, 1], got {request.strength}")
    if denoising_steps(steps, strength) < 1:
        raise _invalid(
            "strength",
            f"runs int(steps * strength) denoising steps, which must be at least 1; got {steps} * {strength}: "
            "raise strength or steps",
        )
    try:
        init = decode_upload(request.init_image)
    except UploadError as exc:
        raise _invalid("init_image", str(exc)) from None
    try:
        mask = decode_mask(request.mask_image) if request.mask_image else None
        fitted = fit_edit_images(init, mask, width, height)
    except UploadError as exc:
        raise _invalid("mask_image", str(exc)) from None
    return ImageEdit(init_png=fitted.init_png, strength=strength, mask_png=fitted.mask_png)


def _validate_uuid(field_name: str, value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise _invalid(field_name, f"must be a UUID, got {value[:64]!r}") from None


def _validate_size(field_name: str, value: int, model: ModelConfig) -> int:
    if value % SIZE_MULTIPLE or not model.min_size <= value <= model.max_size:
        raise _invalid(
            field_name,
            f"must be a multiple of {SIZE_MULTIPLE} within [{model.min_size}, {model.max_size}] "
            f"for model {model.name!r}, got {value}",
        )
    return value


def _invalid(field_name: str, message: str) -> RequestError:
    return RequestError.invalid_argument(field_name, message)
