"""Uploaded images for editing: decoded safely, then fitted to the request's size.

An upload is untrusted bytes. Only PNG and JPEG are opened, the byte size is bounded before
decoding and the pixel count is checked from the header before any pixel is decoded (so a
decompression bomb is refused without allocating it), and any decoder error becomes an
`UploadError` whose message the gateway returns as INVALID_ARGUMENT naming the field.

Fitting rule ("cover", as CSS's ``object-fit: cover``): the image is scaled, keeping its aspect
ratio, to the smallest size that covers width x height, then the overflow is cropped evenly from
both sides (centre crop). A mask goes through exactly the same transform, so it stays aligned with
its image; it must therefore have the init image's dimensions. Masks are binarised at 50% grey:
white (>= 128) is repainted, black is kept.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import PIL.Image
import PIL.ImageOps

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
"""Largest init or mask image accepted, in encoded bytes."""
MAX_UPLOAD_PIXELS = 4096 * 4096
"""Largest init or mask image accepted, in decoded pixels (width x height)."""
UPLOAD_FORMATS = ("PNG", "JPEG")
"""Pillow format names accepted for uploads."""

_MASK_THRESHOLD = 128
# Fast PNG encoding: the fitted images are at most the model's max size and go straight to storage.
_PNG_COMPRESS_LEVEL = 1


class UploadError(ValueError):
    """An uploaded image cannot be used; the message says why (without the field name)."""


@dataclass(frozen=True)
class FittedUpload:
    """An init image (and mask) fitted to the request's size, PNG-encoded."""

    init_png: bytes
    """RGB PNG of width x height: what the model edits and what is stored as the upload."""
    mask_png: bytes | None
    """1-bit-valued grey PNG of width x height (0 keep, 255 repaint), or None without a mask."""


def decode_upload(data: bytes) -> PIL.Image.Image:
    """Decodes a PNG or JPEG upload into an upright RGB image.

    Raises:
        UploadError: empty, larger than `MAX_UPLOAD_BYTES` or `MAX_UPLOAD_PIXELS`, another format,
            or bytes the decoder rejects (truncated, corrupt).
    """
    return _decode(data).convert("RGB")


def decode_mask(data: bytes) -> PIL.Image.Image:
    """Decodes a PNG or JPEG mask into a greyscale image (same checks as `decode_upload`)."""
    return _decode(data).convert("L")


def fit_to_size(image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
    """Scales `image` to cover `width` x `height` (keeping its aspect ratio) and centre-crops the rest."""
    return PIL.ImageOps.fit(image, (width, height), method=PIL.Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def fit_edit_images(init: PIL.Image.Image, mask: PIL.Image.Image | None, width: int, height: int) -> FittedUpload:
    """Fits a decoded init image and optional mask to `width` x `height` and encodes them as PNGs.

    Raises:
        UploadError: the mask's dimensions differ from the init image's.
    """
    if mask is not None and mask.size != init.size:
        raise UploadError(
            f"must have the init image's dimensions {init.width}x{init.height}, got {mask.width}x{mask.height}"
        )
    init_png = _encode_png(fit_to_size(init, width, height))
    if mask is None:
        return FittedUpload(init_png, None)
    fitted = fit_to_size(mask, width, height).point(lambda level: 255 if level >= _MASK_THRESHOLD else 0)
    return FittedUpload(init_png, _encode_png(fitted))


def _decode(data: bytes) -> PIL.Image.Image:
    if not data:
        raise UploadError("must not be empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(f"must be at most {MAX_UPLOAD_BYTES} bytes, got {len(data)}")
    try:
        # Opening reads only the header: the size is known before any pixel is decoded.
        image = PIL.Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
    except PIL.UnidentifiedImageError:
        raise UploadError(f"is not a {' or '.join(UPLOAD_FORMATS)} image") from None
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as exc:
        raise UploadError(f"cannot be decoded: {_reason(exc)}") from None
    with image:
        pixels = image.width * image.height
        if pixels > MAX_UPLOAD_PIXELS:
            raise UploadError(
                f"must have at most {MAX_UPLOAD_PIXELS} pixels, got {image.width}x{image.height}; downscale it first"
            )
        if pixels == 0:
            raise UploadError("has no pixels")
        try:
            image.load()
            # Phone JPEGs store their rotation in EXIF; apply it so the edit sees the picture upright.
            upright = PIL.ImageOps.exif_transpose(image)
        except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as exc:
            raise UploadError(f"cannot be decoded: {_reason(exc)}") from None
        return upright if upright is not None else image.copy()


def _reason(exc: BaseException) -> str:
    # Decoder messages are short and name no user data; cap them anyway.
    return str(exc)[:120] or type(exc).__name__


def _encode_png(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
