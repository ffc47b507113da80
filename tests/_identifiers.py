"""Hypothesis strategies for personal identifiers of every kind the prompt scrubber must remove.

Each draws `(kind, identifier)`; `prompts_with_identifiers` embeds several in filler words.
Filler is lower-case letters only, so it can neither form an identifier nor join one.
`png_with_metadata` is an image whose metadata chunks hold identifiers.
"""

from __future__ import annotations

import io
import string

import phonenumbers
import PIL.Image
import PIL.PngImagePlugin
from hypothesis import assume
from hypothesis import strategies as st
from hypothesis.provisional import urls

from control_plane.identifiers import IdentifierKind

_PHONE_REGIONS = ("US", "GB", "IN", "DE", "FR", "BR", "JP", "AU")
_PHONE_FORMATS = (
    phonenumbers.PhoneNumberFormat.E164,
    phonenumbers.PhoneNumberFormat.INTERNATIONAL,
    phonenumbers.PhoneNumberFormat.NATIONAL,
)
_IBAN_LENGTHS = {"DE": 22, "GB": 22, "FR": 27, "NL": 18, "ES": 24, "IT": 27, "CH": 21, "NO": 15}


@st.composite
def phone_numbers(draw: st.DrawFn) -> str:
    """A valid mobile or fixed-line number of a common region, its last four digits drawn."""
    region = draw(st.sampled_from(_PHONE_REGIONS))
    kind = draw(st.sampled_from((phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE)))
    example = phonenumbers.example_number_for_type(region, kind)
    if example is None:
        raise ValueError(f"libphonenumber has no example {kind} number for {region}")
    national = str(example.national_number)
    tail = draw(st.text(alphabet=string.digits, min_size=4, max_size=4))
    number = phonenumbers.parse(f"+{example.country_code}{national[:-4]}{tail}", None)
    assume(phonenumbers.is_valid_number(number))
    return phonenumbers.format_number(number, draw(st.sampled_from(_PHONE_FORMATS)))


def _luhn_check_digit(digits: str) -> str:
    total = 0
    for index, ch in enumerate(reversed(digits)):
        digit = int(ch)
        if index % 2 == 0:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return str((10 - total % 10) % 10)


@st.composite
def card_numbers(draw: st.DrawFn) -> str:
    """A Luhn-valid 13..19 digit number, compact or grouped by four with spaces or dashes."""
    body = draw(st.text(alphabet=string.digits, min_size=12, max_size=18))
    number = body + _luhn_check_digit(body)
    separator = draw(st.sampled_from(("", " ", "-")))
    return separator.join(number[i : i + 4] for i in range(0, len(number), 4))


@st.composite
def ibans(draw: st.DrawFn) -> str:
    """An IBAN with valid check digits, compact or in groups of four."""
    country = draw(st.sampled_from(sorted(_IBAN_LENGTHS)))
    bban = draw(
        st.text(
            alphabet=string.digits + string.ascii_uppercase,
            min_size=_IBAN_LENGTHS[country] - 4,
            max_size=_IBAN_LENGTHS[country] - 4,
        )
    )
    numeric = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    iban = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4)) if draw(st.booleans()) else iban


handles = st.from_regex(r"@[A-Za-z0-9_]{1,15}", fullmatch=True)
ip_addresses = st.ip_addresses().map(str)

identifiers: st.SearchStrategy[tuple[IdentifierKind, str]] = st.one_of(
    st.tuples(st.just(IdentifierKind.EMAIL), st.emails()),
    st.tuples(st.just(IdentifierKind.PHONE), phone_numbers()),
    st.tuples(st.just(IdentifierKind.URL), urls()),
    st.tuples(st.just(IdentifierKind.HANDLE), handles),
    st.tuples(st.just(IdentifierKind.IP_ADDRESS), ip_addresses),
    st.tuples(st.just(IdentifierKind.CARD_NUMBER), card_numbers()),
    st.tuples(st.just(IdentifierKind.IBAN), ibans()),
)
"""`(kind, identifier)` of every kind."""

filler = st.lists(st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=8), max_size=4).map(" ".join)


@st.composite
def prompts_with_identifiers(draw: st.DrawFn, max_identifiers: int = 3) -> tuple[str, list[tuple[IdentifierKind, str]]]:
    """A prompt of filler words with 1..`max_identifiers` identifiers set among them by spaces."""
    found = draw(st.lists(identifiers, min_size=1, max_size=max_identifiers))
    parts = [draw(filler)]
    for _, identifier in found:
        parts += [identifier, draw(filler)]
    return " ".join(part for part in parts if part), found


def png_with_metadata() -> bytes:
    """A PNG whose text chunks name a person, as an editor or a camera app writes them."""
    info = PIL.PngImagePlugin.PngInfo()
    info.add_text("Author", "Jane Doe <jane@example.com>")
    info.add_itxt("Comment", "taken at 51.5007 N, 0.1246 W", zip=True)
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (3, 2), (200, 10, 30)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()
