"""The invisible watermark: a 48-bit keyed hash of the content id in the image's pixels.

The format is `invisible-watermark`'s "dwtDct", the method diffusers ships for SDXL, chosen over
TrustMark because TrustMark needs model weights that cannot be installed from a package here:
in each 4×4 block of the luma channel's Haar approximation band, the largest non-DC coefficient is
quantised (step 36) so that its remainder says one bit; bit i goes into every 48th block from the
i-th, and reading averages the votes. One change from the library's defaults: luma only (scales
36,0,0). The default marks the two chroma channels, which JPEG's 4:2:0 chroma subsampling wipes
out (no payload survived quality 90 in our measurement); luma marks survive quality 90 and 75
(benchmarks/provenance.py).

The embedding and reading here are a vectorised transcription of the library's `EmbedMaxDct`,
which loops over the blocks in Python (3-6× slower) and rebuilds the image with the horizontal and
vertical detail bands swapped (a bug that costs about 13 dB of PSNR: 30 dB instead of 43 dB).
Marks made here read back with the library's own reader, and this reader agrees with it on any
image (tests/unit/control_plane/test_provenance_marks.py checks both against the library).

The library refuses images under 256×256 pixels in area: smaller images are stored without a
watermark and the reason is recorded (the signed manifest still marks them). A resize moves the
DCT blocks the bits live in, so `read_payloads` also reads the image scaled back to the sizes
generation produces (multiples of 64) it could have been resized from.
"""

from __future__ import annotations

import hashlib
import hmac
import io
from collections.abc import Iterator
from uuid import UUID

import numpy as np
import pywt
from PIL import Image

PAYLOAD_BITS = 48
MIN_PIXELS = 256 * 256
"""invisible-watermark's minimum image area."""
MAX_BIT_ERRORS = 4
"""A read payload within this many bits of a recorded one names that item: a random 48-bit read
lands this close to a given payload with probability about 7e-10."""
_STEP = 36.0
"""Quantisation step of the marked coefficients (the library's scale), in the luma channel only."""
_BLOCK = 4
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
    luma = _luma(rgb)
    rows, cols = height // _BLOCK * _BLOCK, width // _BLOCK * _BLOCK
    approximation, details = pywt.dwt2(luma[:rows, :cols], "haar")
    blocks, shape = _blocks(approximation)
    index = np.arange(len(blocks))
    position = np.argmax(np.abs(blocks[:, 1:]), axis=1) + 1
    value = blocks[index, position]
    bit = np.asarray(_bits(payload), dtype=np.float64)[index % PAYLOAD_BITS]
    magnitude = (np.abs(value) // _STEP + 0.25 + 0.5 * bit) * _STEP
    blocks[index, position] = np.where(value >= 0, magnitude, -magnitude)
    approximation[: shape[0] * _BLOCK, : shape[1] * _BLOCK] = _unblocks(blocks, shape)
    delta = np.zeros_like(luma)
    delta[:rows, :cols] = pywt.idwt2((approximation, details), "haar") - luma[:rows, :cols]
    # A change of luma alone, with the chroma kept, is the same change of R, G and B.
    marked = np.rint(rgb.astype(np.float64) + delta[:, :, np.newaxis])
    return np.ascontiguousarray(np.clip(marked, 0, 255).astype(np.uint8))


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
    for candidate in _unresized(rgb):
        yield _read(candidate)


def bit_errors(a: int, b: int) -> int:
    """How many of the 48 bits differ."""
    return (a ^ b).bit_count()


def _read(rgb: np.ndarray) -> int:
    height, width = rgb.shape[:2]
    luma = _luma(rgb)
    approximation, _ = pywt.dwt2(luma[: height // _BLOCK * _BLOCK, : width // _BLOCK * _BLOCK], "haar")
    blocks, _ = _blocks(approximation)
    index = np.arange(len(blocks))
    value = np.abs(blocks[index, np.argmax(np.abs(blocks[:, 1:]), axis=1) + 1])
    votes = np.bincount(index % PAYLOAD_BITS, weights=(value % _STEP > 0.5 * _STEP), minlength=PAYLOAD_BITS)
    counts = np.bincount(index % PAYLOAD_BITS, minlength=PAYLOAD_BITS)
    # The library's rule: a bit is 1 when more than half of its blocks (127/255) vote 1.
    bits = votes / counts * 255 > 127
    return int("".join("1" if bit else "0" for bit in bits), 2)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """The 8-bit luma OpenCV's RGB2YUV gives (BT.601 weights in 14-bit fixed point, rounded), as
    floats: the library reads luma that way, so marks read the same without loading OpenCV (whose
    wheel needs libGL, which the control plane's image does not have)."""
    pixels = rgb.astype(np.int32)
    return ((pixels[..., 0] * 4899 + pixels[..., 1] * 9617 + pixels[..., 2] * 1868 + 8192) >> 14).astype(np.float64)


def _blocks(band: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """The band's whole 4×4 blocks as rows of 16 (row-major block order, as the library numbers them)."""
    rows, cols = band.shape[0] // _BLOCK, band.shape[1] // _BLOCK
    blocks = band[: rows * _BLOCK, : cols * _BLOCK].reshape(rows, _BLOCK, cols, _BLOCK).swapaxes(1, 2)
    return blocks.reshape(rows * cols, _BLOCK * _BLOCK).copy(), (rows, cols)


def _unblocks(blocks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows, cols = shape
    return blocks.reshape(rows, cols, _BLOCK, _BLOCK).swapaxes(1, 2).reshape(rows * _BLOCK, cols * _BLOCK)


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
