"""Stored images keep their pixels and provenance and lose every metadata chunk."""

from __future__ import annotations

import io

import PIL.Image
import pytest

from control_plane import png
from tests._identifiers import png_with_metadata


def _chunk_types(data: bytes) -> list[bytes]:
    types, offset = [], len(png.SIGNATURE)
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        types.append(data[offset + 4 : offset + 8])
        offset += 12 + length
    return types


def test_text_chunks_and_trailing_bytes_are_dropped_and_the_pixels_kept() -> None:
    original = png_with_metadata() + b"trailing secret"
    assert b"jane@example.com" in original

    stripped = png.without_metadata(original)

    assert _chunk_types(stripped) == [b"IHDR", b"IDAT", b"IEND"]
    assert b"jane" not in stripped and b"trailing" not in stripped
    with PIL.Image.open(io.BytesIO(stripped)) as image, PIL.Image.open(io.BytesIO(original)) as before:
        assert image.tobytes() == before.tobytes() and not image.text


def test_a_png_without_metadata_is_returned_as_it_is() -> None:
    clean = png.without_metadata(png_with_metadata())
    assert png.without_metadata(clean) is clean


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GIF89a", "no PNG signature"),
        (png.SIGNATURE + b"\x00\x00\x00\x0dIHDR", "runs past the end"),
        (png.SIGNATURE, "no IEND"),
    ],
)
def test_broken_structures_are_refused_saying_where(data: bytes, message: str) -> None:
    with pytest.raises(png.MalformedPng, match=message):
        png.without_metadata(data)
