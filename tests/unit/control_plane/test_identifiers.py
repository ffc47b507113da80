"""The prompt scrubber: personal identifiers become typed placeholders; art prompts stay as they are."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings

from control_plane.identifiers import SCRUBBER_VERSION, IdentifierKind, PromptScrubber, default_scrubber
from tests._identifiers import prompts_with_identifiers

SCRUBBER = default_scrubber()


@settings(max_examples=300, deadline=None)
@given(prompts_with_identifiers())
def test_no_generated_identifier_survives_and_each_leaves_its_placeholder(
    drawn: tuple[str, list[tuple[IdentifierKind, str]]],
) -> None:
    prompt, found = drawn
    scrubbed = SCRUBBER.scrub(prompt)
    for _, identifier in found:
        assert identifier not in scrubbed
    if len(found) == 1:
        # With several, neighbours can merge into one span of the first one's kind.
        kind, _ = found[0]
        assert kind.placeholder in scrubbed
    assert SCRUBBER.scrub_array(pa.array([prompt, "a quiet harbour"])).to_pylist() == [scrubbed, "a quiet harbour"]


@pytest.mark.parametrize(
    ("prompt", "scrubbed"),
    [
        ("portrait for jane.doe@example.com, oil", "portrait for <EMAIL>, oil"),
        ("call +44 20 7946 0958 or (415) 555-2671 now", "call <PHONE> or <PHONE> now"),
        ("see https://example.org/a?b=1. then www.example.com", "see <URL>. then <URL>"),
        ("by @studio_ghibli_fan in blue", "by <HANDLE> in blue"),
        ("from 192.168.10.4 and 2001:db8::17", "from <IP_ADDRESS> and <IP_ADDRESS>"),
        ("pay 4111 1111 1111 1111 to DE89 3704 0044 0532 0130 00", "pay <CARD_NUMBER> to <IBAN>"),
    ],
)
def test_each_kind_is_replaced_by_its_typed_placeholder(prompt: str, scrubbed: str) -> None:
    assert SCRUBBER.scrub(prompt) == scrubbed


@pytest.mark.parametrize(
    "prompt",
    [
        "a lighthouse at dusk, oil painting, variation 123456",
        "SDXL 1.0, 1920x1080, 16:9, steps 50, cfg 7.5, from 1990 to 2020",
        "masterpiece: a cat @ the window, 4k",
        "ratio 3:2, time 12:30, seed 42, version 2.1.0",
    ],
)
def test_art_prompts_without_identifiers_are_left_unchanged(prompt: str) -> None:
    assert SCRUBBER.scrub(prompt) == prompt


def test_a_luhn_invalid_number_and_a_bad_iban_checksum_are_not_called_card_or_iban() -> None:
    assert "<CARD_NUMBER>" not in SCRUBBER.scrub("ref 4111 1111 1111 1112")
    # (Its tail may still be taken for a phone number: wrongly removed digits cost a trainer little.)
    assert "<IBAN>" not in SCRUBBER.scrub("code DE00 3704 0044 0532 0130 00")


def test_the_description_names_the_scrubber_its_version_and_its_detectors() -> None:
    description = SCRUBBER.describe()
    assert (description["name"], description["version"]) == ("atelier.identifiers", SCRUBBER_VERSION)
    assert "phonenumbers" in description["detectors"] and description["libraries"]["phonenumbers"]
    assert "<EMAIL>" in description["placeholders"]


def test_a_scrubber_without_detectors_changes_nothing() -> None:
    assert PromptScrubber(()).scrub("mail a@b.co") == "mail a@b.co"
