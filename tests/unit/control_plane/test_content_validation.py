"""What a store request's items must be, checked before anything is written."""

from __future__ import annotations

import pytest

from control_plane.content import MAX_ITEM_BYTES, PNG_SIGNATURE, ContentKind, NewContent, validate_new_content
from control_plane.errors import InvalidArgument
from tests.integration.control_plane._support import png_bytes

PNG = png_bytes(1)


def _item(**fields: object) -> NewContent:
    values: dict[str, object] = {"kind": ContentKind.GENERATED, "media_type": "image/png", "data": PNG}
    values.update(fields)
    return NewContent(**values)  # type: ignore[arg-type]


def test_one_to_sixteen_png_items_are_accepted() -> None:
    validate_new_content([_item()])
    validate_new_content([_item()] * 16)


@pytest.mark.parametrize(
    ("items", "field"),
    [
        ([], "items"),
        ([_item()] * 17, "items"),
        ([_item(), _item(media_type="image/jpeg")], "items[1].media_type"),
        ([_item(data=b"")], "items[0].data"),
        ([_item(data=b"\xff\xd8\xff\xe0 jpeg")], "items[0].data"),
        ([_item(data=PNG_SIGNATURE + b"rest of a png")], "items[0].data"),
        ([_item(data=PNG[:-12])], "items[0].data"),
        ([_item(data=PNG + b"\0" * MAX_ITEM_BYTES)], "items[0].data"),
        ([_item(prompt="p" * 2001)], "items[0].prompt"),
    ],
    ids=[
        "none",
        "seventeen",
        "jpeg type",
        "empty",
        "jpeg bytes",
        "broken chunks",
        "no IEND",
        "over 32 MiB",
        "long prompt",
    ],
)
def test_bad_items_are_refused_naming_the_item_and_field(items: list[NewContent], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_new_content(items)
    assert caught.value.field == field
