"""Personal identifiers in free text: detectors, and the scrubber training exports run on prompts.

Seeds 001 and 004 promise that personal identifiers are removed before data is used for
training. A `PromptScrubber` runs its detectors over a prompt and replaces every finding by a
typed placeholder (`<EMAIL>`, `<PHONE>`, ...), so a trainer still sees that something of that
kind was there.

Detectors are small objects behind one interface (`IdentifierDetector`): a cheap `hint`
regex that every text holding such an identifier matches, and `find`, which returns exact,
validated spans. The scrubber ORs the hints into one pattern and runs the detectors only on
texts it matches, which is what keeps a million-row export fast (most prompts hold no digit
run, `@`, `://` or `www.`).

Why not Microsoft Presidio: its analyzer imports spaCy and builds a spaCy pipeline when it
starts (the models cannot be downloaded here), and for these kinds its recognizers are the
same thing as these: regexes with checksums (Luhn, IBAN mod-97) and Google's libphonenumber
for phones. So the detectors here are regexes validated by the standard library
(`ipaddress`) and checksums, and phones are judged by `phonenumbers`, the Python port of
libphonenumber. Another detector (a Presidio recognizer, a named-entity model) can be added
by implementing `IdentifierDetector`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc

SCRUBBER_NAME = "atelier.identifiers"
SCRUBBER_VERSION = "1"
"""Bump when a detector changes what it finds: export manifests record it."""


class IdentifierKind(StrEnum):
    """What a finding is; its placeholder is `<NAME>`."""

    EMAIL = "email"
    PHONE = "phone"
    URL = "url"
    HANDLE = "handle"
    IP_ADDRESS = "ip_address"
    CARD_NUMBER = "card_number"
    IBAN = "iban"

    @property
    def placeholder(self) -> str:
        """The text that replaces an identifier of this kind, e.g. `<EMAIL>`."""
        return f"<{self.name}>"


@dataclass(frozen=True)
class Finding:
    """One identifier in a text: `text[start:end]`."""

    kind: IdentifierKind
    start: int
    end: int


class IdentifierDetector(Protocol):
    """Finds identifiers of one or more kinds in a text."""

    @property
    def name(self) -> str:
        """Recorded in export manifests."""
        ...

    @property
    def hint(self) -> re.Pattern[str]:
        """Matches every text in which `find` could find something (a superset: it may match more).

        Written so that RE2 reads it the same (no lookaround, no backreferences): batches are
        filtered with it by pyarrow, whose regexes are RE2's."""
        ...

    def find(self, text: str) -> Iterator[Finding]:
        """Every identifier of the detector's kinds in `text`, overlaps allowed."""
        ...


@dataclass(frozen=True)
class PatternDetector:
    """Candidates from a regex, each kept when `valid` accepts the matched text."""

    name: str
    kind: IdentifierKind
    pattern: re.Pattern[str]
    hint: re.Pattern[str]
    valid: Callable[[str], bool] | None = None
    """Judges a candidate; None keeps every match."""
    strip: str = ""
    """Characters taken off a candidate's end (sentence punctuation after a URL)."""

    def find(self, text: str) -> Iterator[Finding]:
        for match in self.pattern.finditer(text):
            candidate = match.group().rstrip(self.strip) if self.strip else match.group()
            if candidate and (self.valid is None or self.valid(candidate)):
                yield Finding(self.kind, match.start(), match.start() + len(candidate))


_GROUP = re.compile(r"[A-Za-z0-9]+")


@dataclass(frozen=True)
class GroupedDetector:
    """Identifiers written in groups (phone and card numbers, IBANs), found among runs of groups.

    A regex alone cannot tell where such a number ends when another follows ("4111 1111 1111
    1111 2020", two phone numbers side by side: libphonenumber's own matcher gives up on
    those), and a match validated and then rejected would hide the real one inside it. So
    every window of adjacent groups of a run, up to `max_length` characters, is a candidate;
    the longest valid one from each start wins, and the search goes on after it.
    """

    name: str
    kind: IdentifierKind
    run: re.Pattern[str]
    """A maximal run of groups (letters or digits) and separators."""
    window: re.Pattern[str]
    """What a candidate must match in full."""
    hint: re.Pattern[str]
    valid: Callable[[str], bool]
    max_length: int
    """Longest candidate, in characters (separators included)."""
    lead: str = ""
    """Characters just before a first group that belong to the number ("+" of a phone number)."""

    def find(self, text: str) -> Iterator[Finding]:
        for run in self.run.finditer(text):
            groups = [(run.start() + g.start(), run.start() + g.end()) for g in _GROUP.finditer(run.group())]
            first = 0
            while first < len(groups):
                start = groups[first][0]
                while start > run.start() and text[start - 1] in self.lead:
                    start -= 1
                for last in range(len(groups) - 1, first - 1, -1):
                    end = groups[last][1]
                    if end - start > self.max_length:
                        continue
                    candidate = text[start:end]
                    if self.window.fullmatch(candidate) and self.valid(candidate):
                        yield Finding(self.kind, start, end)
                        first = last + 1
                        break
                else:
                    first += 1


def phone_detector(regions: tuple[str, ...] = ("US", "GB", "IN", "DE", "FR", "BR", "JP", "AU")) -> GroupedDetector:
    """Phone numbers that libphonenumber (`phonenumbers`) says are valid: written
    internationally (`+...`, any country) or nationally in one of `regions` (ISO 3166 alpha-2).

    Valid, not merely possible: the number's prefix must be one the region assigns, so a year
    range or a seed is not taken for a phone.
    """

    def valid(candidate: str) -> bool:
        if not 7 <= sum(ch.isdigit() for ch in candidate) <= 17:
            return False
        for region in (None,) if candidate.startswith("+") else regions:
            try:
                number = phonenumbers.parse(candidate, region)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_valid_number(number):
                return True
        return False

    return GroupedDetector(
        "phonenumbers",
        IdentifierKind.PHONE,
        run=re.compile(r"(?<![\w+])\+?\(?\d+(?:[ .()-]{1,3}\d+)*"),
        window=re.compile(r"\+?\(?\d[\d ().-]*\d"),
        # Seven digits with separators between: the shortest these regions' valid numbers have,
        # written nationally (trunk prefix included) or internationally.
        hint=re.compile(r"\d(?:[\s().-]{0,3}\d){6}"),
        valid=valid,
        max_length=25,
        lead="+(",
    )


@dataclass(frozen=True)
class PromptScrubber:
    """Replaces every identifier its detectors find by its kind's placeholder."""

    detectors: tuple[IdentifierDetector, ...]
    """In priority order: where findings of the same length start at the same place, the first wins."""

    _hint: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # One pass of one regex decides whether a text needs the detectors at all ("(?!)" never matches).
        combined = "|".join(f"(?:{d.hint.pattern})" for d in self.detectors) or "(?!)"
        object.__setattr__(self, "_hint", re.compile(combined))

    def findings(self, text: str) -> list[Finding]:
        """The spans to replace in `text`: non-overlapping, in order.

        Overlapping findings are merged into one span, so whatever any detector took for an
        identifier goes ("201-555-0000 0000000000000" is a phone number and a card-like run
        sharing "0000"); the span keeps the kind of the finding that starts first, then the
        longer, then the earlier detector's (an e-mail address holds what looks like a handle).
        """
        if self._hint.search(text) is None:
            return []
        ranked = sorted(
            (
                (finding.start, -(finding.end - finding.start), priority, finding)
                for priority, detector in enumerate(self.detectors)
                for finding in detector.find(text)
            ),
            key=lambda entry: entry[:3],
        )
        merged: list[Finding] = []
        for *_, finding in ranked:
            if merged and finding.start < merged[-1].end:
                last = merged[-1]
                merged[-1] = Finding(last.kind, last.start, max(last.end, finding.end))
            else:
                merged.append(finding)
        return merged

    def scrub(self, text: str) -> str:
        """`text` with every identifier replaced by its placeholder (`<EMAIL>`, `<PHONE>`, ...)."""
        found = self.findings(text)
        if not found:
            return text
        parts: list[str] = []
        position = 0
        for finding in found:
            parts.append(text[position : finding.start])
            parts.append(finding.kind.placeholder)
            position = finding.end
        parts.append(text[position:])
        return "".join(parts)

    def scrub_array(self, texts: pa.Array) -> pa.Array:
        """`scrub` of every string of `texts`; rows no hint matches are not looked at in Python.

        The hints run over the whole batch in pyarrow (C++, millions of rows a second), so an
        export pays Python's price only for the few prompts that may hold an identifier.
        """
        maybe = pc.match_substring_regex(texts, self._hint.pattern)
        rows = pc.indices_nonzero(maybe).to_pylist()
        if not rows:
            return texts
        values = texts.to_pylist()
        for row in rows:
            values[row] = self.scrub(values[row])
        return pa.array(values, type=texts.type)

    def describe(self) -> dict[str, Any]:
        """What export manifests record: the scrubber, its version, its detectors and their libraries."""
        return {
            "name": SCRUBBER_NAME,
            "version": SCRUBBER_VERSION,
            "detectors": [detector.name for detector in self.detectors],
            "libraries": {"phonenumbers": phonenumbers.__version__},
            "placeholders": [kind.placeholder for kind in IdentifierKind],
        }


def _card_valid(candidate: str) -> bool:
    digits = [int(ch) for ch in candidate if ch.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for index, digit in enumerate(reversed(digits)):
        if index % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _iban_valid(candidate: str) -> bool:
    compact = candidate.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _ip_valid(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


def default_scrubber() -> PromptScrubber:
    """The scrubber training exports use: e-mail, URL, IBAN, IP, card, phone and @handle detectors."""
    return PromptScrubber(
        (
            PatternDetector(
                "email",
                IdentifierKind.EMAIL,
                re.compile(
                    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+"
                    r"[A-Za-z](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                ),
                hint=re.compile("@"),
            ),
            PatternDetector(
                "url",
                IdentifierKind.URL,
                re.compile(r"(?i)\b(?:[a-z][a-z0-9+.-]*://|www\.)[^\s<>\"]+"),
                hint=re.compile(r"(?i:://|www\.)"),
                strip=".,;:!?)]}'",
            ),
            GroupedDetector(
                "iban",
                IdentifierKind.IBAN,
                # IBANs are written in capitals; lower case would let every word join a run.
                run=re.compile(r"(?<!\w)[A-Z0-9]+(?: [A-Z0-9]+)*"),
                window=re.compile(r"[A-Z]{2}\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{1,4}){3,8})"),
                hint=re.compile(r"[A-Z]{2}\d{2} ?[A-Z0-9]{4}"),
                valid=_iban_valid,
                max_length=42,
            ),
            PatternDetector(
                "ipv4",
                IdentifierKind.IP_ADDRESS,
                re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w.]|\.\d)"),
                hint=re.compile(r"\d\.\d{1,3}\.\d"),
                valid=_ip_valid,
            ),
            PatternDetector(
                "ipv6",
                IdentifierKind.IP_ADDRESS,
                re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.\d{1,3}){0,3}(?![\w:])"),
                hint=re.compile(r"[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:"),
                valid=_ip_valid,
            ),
            GroupedDetector(
                "card",
                IdentifierKind.CARD_NUMBER,
                run=re.compile(r"(?<!\w)\d+(?:[ -]\d+)*"),
                # 13..19 digits, compact or in groups (4-4-4-4, 4-6-5); card-like means Luhn-valid.
                window=re.compile(r"\d{13,19}|\d{1,6}(?:[ -]\d{1,6}){1,7}"),
                hint=re.compile(r"\d(?:[ -]?\d){12}"),
                valid=_card_valid,
                max_length=26,
            ),
            phone_detector(),
            PatternDetector(
                "handle",
                IdentifierKind.HANDLE,
                re.compile(r"(?<![\w@.])@[A-Za-z0-9_](?:[A-Za-z0-9_.]{0,62}[A-Za-z0-9_])?"),
                hint=re.compile("@"),
            ),
        )
    )
