"""Uploaded images: safe decoding of untrusted bytes, and the documented fitting rule."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import PIL.Image
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.uploads import (
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_PIXELS,
    UploadError,
    decode_mask,
    decode_upload,
    fit_edit_images,
    fit_to_size,
)


def _encoded(image: PIL.Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _bands(width: int, height: int, colours: list[tuple[int, int, int]]) -> PIL.Image.Image:
    """Vertical bands of equal width, left to right."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    band = width // len(colours)
    for index, colour in enumerate(colours):
        pixels[:, index * band : (index + 1) * band] = colour
    return PIL.Image.fromarray(pixels)


RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


class TestDecoding:
    def test_png_and_jpeg_decode_to_rgb(self) -> None:
        image = _bands(40, 20, [RED, GREEN])
        for fmt in ("PNG", "JPEG"):
            decoded = decode_upload(_encoded(image, fmt))
            assert decoded.mode == "RGB" and decoded.size == (40, 20)

    def test_alpha_and_palette_images_become_rgb(self) -> None:
        assert decode_upload(_encoded(PIL.Image.new("RGBA", (8, 8), (1, 2, 3, 4)))).getpixel((0, 0)) == (1, 2, 3)
        assert decode_upload(_encoded(PIL.Image.new("P", (8, 8)))).mode == "RGB"

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            (b"", "must not be empty"),
            (b"definitely not an image", "is not a PNG or JPEG image"),
            (_encoded(PIL.Image.new("RGB", (8, 8)), "GIF"), "is not a PNG or JPEG image"),
            (_encoded(PIL.Image.new("RGB", (8, 8)), "BMP"), "is not a PNG or JPEG image"),
        ],
    )
    def test_garbage_and_other_formats_are_refused(self, data: bytes, message: str) -> None:
        with pytest.raises(UploadError, match=message):
            decode_upload(data)

    def test_a_truncated_file_is_refused_not_half_decoded(self) -> None:
        noise = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
        for fmt in ("PNG", "JPEG"):
            data = _encoded(noise, fmt)
            with pytest.raises(UploadError, match="cannot be decoded"):
                decode_upload(data[: len(data) // 2])

    def test_too_many_pixels_are_refused_from_the_header_alone(self) -> None:
        # A 1-bit 5000x4000 image compresses to a few kilobytes but would decode to 20 megapixels.
        bomb = _encoded(PIL.Image.new("1", (5000, 4000)))
        assert len(bomb) < 100_000 and MAX_UPLOAD_PIXELS < 5000 * 4000
        with pytest.raises(UploadError, match="at most 16777216 pixels, got 5000x4000"):
            decode_upload(bomb)

    def test_too_many_bytes_are_refused_before_decoding(self) -> None:
        with pytest.raises(UploadError, match=f"at most {MAX_UPLOAD_BYTES} bytes"):
            decode_upload(b"\x89PNG\r\n\x1a\n" + bytes(MAX_UPLOAD_BYTES))

    def test_exif_rotation_is_applied(self) -> None:
        image = _bands(40, 20, [RED, GREEN])
        exif = PIL.Image.Exif()
        exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
        decoded = decode_upload(_encoded(image, "JPEG", exif=exif.tobytes()))
        assert decoded.size == (20, 40)

    @settings(max_examples=60, deadline=None)
    @given(st.binary(max_size=200))
    def test_arbitrary_bytes_either_decode_or_raise_upload_error(self, data: bytes) -> None:
        for prefix in (b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"):
            with contextlib.suppress(UploadError):
                decode_upload(prefix + data)


class TestFitting:
    def test_wider_image_is_scaled_to_cover_and_centre_cropped(self) -> None:
        # 300x100 in thirds: covering 64x64 scales to 192x64 and keeps the middle third.
        fitted = fit_to_size(_bands(300, 100, [RED, GREEN, BLUE]), 64, 64)
        assert fitted.size == (64, 64)
        pixels = np.asarray(fitted, dtype=np.int16)
        inner = pixels[:, 4:60]  # Lanczos rings a few pixels at the band edges
        assert np.abs(inner - np.array(GREEN)).max() <= 8

    def test_taller_image_keeps_its_middle_rows(self) -> None:
        tall = _bands(300, 100, [RED, GREEN, BLUE]).rotate(90, expand=True)  # 100x300, bands across
        fitted = fit_to_size(tall, 64, 32)
        assert fitted.size == (64, 32)
        # Covering 64x32 scales 100x300 to 64x192 and keeps rows 80..112, inside the green middle third.
        assert np.abs(np.asarray(fitted, dtype=np.int16)[4:28] - np.array(GREEN)).max() <= 8

    def test_mask_is_fitted_like_the_image_and_binarised(self) -> None:
        init = _bands(200, 100, [RED, BLUE])
        grey = np.zeros((100, 200), dtype=np.uint8)
        grey[:, 100:] = 200  # light grey counts as white
        grey[:, :100] = 90  # dark grey counts as black
        fitted = fit_edit_images(init, PIL.Image.fromarray(grey), 64, 64)
        image = PIL.Image.open(io.BytesIO(fitted.init_png))
        assert image.mode == "RGB" and image.size == (64, 64)
        assert fitted.mask_png is not None
        mask = np.asarray(PIL.Image.open(io.BytesIO(fitted.mask_png)))
        assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 255}
        # The boundary between kept and repainted sits where the image's red/blue boundary does.
        assert (mask[:, :30] == 0).all() and (mask[:, 34:] == 255).all()
        pixels = np.asarray(image, dtype=np.int16)
        assert pixels[:, :28, 0].min() > 200 and pixels[:, 36:, 2].min() > 200

    def test_mask_of_another_size_is_refused(self) -> None:
        init = decode_upload(_encoded(PIL.Image.new("RGB", (40, 20))))
        mask = decode_mask(_encoded(PIL.Image.new("L", (20, 40))))
        with pytest.raises(UploadError, match="init image's dimensions 40x20, got 20x40"):
            fit_edit_images(init, mask, 64, 64)
