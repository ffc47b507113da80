"""PNG chunks: the structure check StoreContent applies and the metadata it drops.

Stored images carry no metadata (seeds 001 and 004: personal identifiers are removed before
training; an image's text chunks can hold a prompt, a user name or a path, its eXIf chunk a
camera serial or a location). Only the chunks a decoder needs to draw the image are kept,
plus `caBX`, the C2PA provenance manifest (DESIGN.md §5: signed provenance on every image),
and nothing after IEND. Done when an item is stored, not when it is exported, so the stored
bytes, their SHA-256 (which trainers ask CheckTrainingEligibility about) and the exported
bytes are the same.
"""

from __future__ import annotations

import struct

SIGNATURE = b"\x89PNG\r\n\x1a\n"

KEPT_CHUNKS = frozenset(
    {
        # Critical chunks.
        b"IHDR",
        b"PLTE",
        b"IDAT",
        b"IEND",
        # Ancillary chunks that change how pixels are drawn (transparency, colour, animation).
        b"tRNS",
        b"cHRM",
        b"gAMA",
        b"sBIT",
        b"sRGB",
        b"cICP",
        b"mDCV",
        b"cLLI",
        b"bKGD",
        b"pHYs",
        b"acTL",
        b"fcTL",
        b"fdAT",
        # C2PA provenance.
        b"caBX",
    }
)
"""Every other chunk (tEXt, zTXt, iTXt, eXIf, tIME, iCCP's named profile, private chunks) is dropped."""


class MalformedPng(ValueError):
    """The bytes are not a sequence of whole PNG chunks ending with IEND."""


def without_metadata(data: bytes) -> bytes:
    """`data` with only `KEPT_CHUNKS` and nothing after IEND; `data` itself when nothing goes.

    Chunk CRCs are not checked (a decoder does that); only the structure is.

    Raises:
        MalformedPng: No PNG signature, a chunk runs past the end, or there is no IEND;
            the message says where.
    """
    if not data.startswith(SIGNATURE):
        raise MalformedPng("has no PNG signature")
    kept: list[memoryview] = []
    dropped = False
    view = memoryview(data)
    offset = len(SIGNATURE)
    while True:
        if offset + 8 > len(data):
            raise MalformedPng(f"ends inside a chunk header at byte {offset} (no IEND chunk)")
        (length,) = struct.unpack_from(">I", data, offset)
        kind = bytes(view[offset + 4 : offset + 8])
        end = offset + 12 + length
        if end > len(data):
            raise MalformedPng(f"has a {kind!r} chunk at byte {offset} that runs past the end")
        if kind in KEPT_CHUNKS:
            kept.append(view[offset:end])
        else:
            dropped = True
        offset = end
        if kind == b"IEND":
            break
    if not dropped and offset == len(data):
        return data
    return SIGNATURE + b"".join(kept)
