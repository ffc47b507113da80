"""The invisible watermark: a 48-bit keyed hash of the content id in the image's pixels.

`invisible-watermark`'s DWT-DCT, the method diffusers ships for SDXL, chosen over TrustMark
because TrustMark needs model weights that cannot be installed from a package here; DWT-DCT is
plain signal processing (numpy, OpenCV, PyWavelets) and runs in a few tens of milliseconds on a
CPU at 512². One change from the library's default: the bits go into the luma channel only
(scales 36,0,0). The default marks the two chroma channels, which JPEG's 4:2:0 chroma
subsampling wipes out (no payload survived quality 90 in our measurement); luma marks survive
quality 90 and 75 (benchmarks/provenance.py).

The library refuses images under 256×256 pixels in area: smaller images are stored without a
watermark and the reason is recorded (the signed manifest still marks them). A resize moves the
DCT blocks the bits live in, so `read_payloads` also reads the image scaled back to the sizes
generation produces (multiples of 64) it could have been resized from.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import importlib.util
import io
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import UUID

import numpy as np
from PIL import Image

PAYLOAD_BITS = 48
MIN_PIXELS = 256 * 256
"""invisible-watermark's minimum image area."""
MAX_BIT_ERRORS = 4
"""A read payload within this many bits of a recorded one names that item: a random 48-bit read
lands this close to a given payload with probability about 7e-10."""
_SCALES = [36, 0, 0]
"""Strength per YUV channel: luma only (see the module docstring)."""
_GENERATION_GRID = 64
_RESIZE_FACTORS = (1 / 0.9, 1 / 1.1, 1 / 0.8, 1 / 1.2, 1 / 0.75, 1 / 1.25, 2.0, 0.5)
"""Resizes undone when the image read as it is holds no payload."""

SKIPPED_DISABLED = "disabled for the model"
SKIPPED_TOO_SMALL = f"smaller than {MIN_PIXELS} pixels in area (DWT-DCT's minimum)"


def payload_for(key: bytes, content_id: UUID) -> int:
    """The watermark payload of an item: the first 48 bits of HMAC-SHA256(key, content id)."""
    digest = hmac.new(key, b"atelier watermark\0" + content_id.bytes, hashlib.sha256).digest()
    return int.from_bytes(digest[: PAYLOAD_BITS // 8], "big")


def fits(width: int, height: int) -> bool:
    """Whether an image of this size can carry the watermark."""
    return width * height >= MIN_PIXELS


def embed_watermark(rgb: np.ndarray, payload: int) -> np.ndarray:
    """`rgb` (H×W×3 uint8) with `payload` embedded.

    Raises:
        ValueError: The image is smaller than `MIN_PIXELS` or the payload is not 48 bits.
    """
    height, width = rgb.shape[:2]
    if not fits(width, height):
        raise ValueError(f"a {width}x{height} image is {SKIPPED_TOO_SMALL}")
    if not 0 <= payload < 1 << PAYLOAD_BITS:
        raise ValueError(f"the payload must be {PAYLOAD_BITS} bits")
    # The library works on BGR (OpenCV's order).
    marked_bgr = _embedder(_bits(payload)).encode(np.ascontiguousarray(rgb[:, :, ::-1]))
    return np.ascontiguousarray(np.clip(marked_bgr, 0, 255).astype(np.uint8)[:, :, ::-1])


def embed_in_png(png: bytes, payload: int) -> bytes:
    """A PNG of `png`'s pixels with `payload` embedded (no metadata chunks; alpha is kept).

    Raises:
        ValueError: See `embed_watermark`.
    """
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
        rgb = np.asarray(image.convert("RGB"))
    marked = Image.fromarray(embed_watermark(rgb, payload))
    if alpha is not None:
        marked.putalpha(alpha)
    out = io.BytesIO()
    marked.save(out, format="PNG")
    return out.getvalue()


def read_payloads(rgb: np.ndarray) -> Iterator[int]:
    """Candidate payloads read from `rgb`: the image as it is, then scaled back to each
    generation size it could have been resized from. Images too small to carry one yield none."""
    decoder = _embedder([])
    for candidate in _unresized(rgb):
        bits = decoder.decode(np.ascontiguousarray(candidate[:, :, ::-1]))
        yield int("".join("1" if bit else "0" for bit in bits), 2)


def bit_errors(a: int, b: int) -> int:
    """How many of the 48 bits differ."""
    return (a ^ b).bit_count()


@functools.cache
def _dwt_dct_module() -> ModuleType:
    # The package's __init__ imports its RivaGAN method, which imports torch: the control plane
    # runs without torch (DESIGN.md §1), so only the DWT-DCT module is loaded, from its file.
    spec = importlib.util.find_spec("imwatermark")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("invisible-watermark is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "maxDct.py"
    module_spec = importlib.util.spec_from_file_location("_atelier_imwatermark_dwt_dct", path)
    if module_spec is None or module_spec.loader is None:
        raise ModuleNotFoundError(f"invisible-watermark's DWT-DCT module is missing ({path})")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _embedder(bits: list[int]) -> Any:
    """invisible-watermark's DWT-DCT embedder and reader ("dwtDct"), 4×4 blocks."""
    return _dwt_dct_module().EmbedMaxDct(watermarks=bits, wmLen=PAYLOAD_BITS, scales=_SCALES, block=4)


def _bits(payload: int) -> list[int]:
    return [(payload >> (PAYLOAD_BITS - 1 - i)) & 1 for i in range(PAYLOAD_BITS)]


def _unresized(rgb: np.ndarray) -> Iterator[np.ndarray]:
    height, width = rgb.shape[:2]
    seen: set[tuple[int, int]] = set()
    if fits(width, height):
        seen.add((width, height))
        yield rgb
    image = Image.fromarray(rgb)
    for factor in _RESIZE_FACTORS:
        size = (_on_grid(width * factor), _on_grid(height * factor))
        if size in seen or not fits(*size):
            continue
        seen.add(size)
        yield np.asarray(image.resize(size, Image.Resampling.BICUBIC))


def _on_grid(length: float) -> int:
    return max(_GENERATION_GRID, round(length / _GENERATION_GRID) * _GENERATION_GRID)
