"""Policy profiles: every privacy and retention rule of a deployment, in one frozen dataclass.

A profile is loaded and validated once, at start-up, from a JSON file (`deploy/policies/`
ships one per seed policy) or taken from the product defaults (DESIGN.md §5). Each tenant
names its profile (`tenants.policy_profile`); "default" means the cluster's configured one,
so one cluster can serve several profiles.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any
from uuid import UUID

from control_plane.config import ConfigError
from control_plane.db.pool import Connection
from control_plane.ttl_cache import TtlCache

DEFAULT_PROFILE_NAME = "default"
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,99}$")
_TIERS = ("free", "premium")
_VISIBILITIES = ("private", "public")
OUTPUT_BLOCK = "block"
OUTPUT_FLAG_PRIVATE = "flag_private"
OUTPUT_CLASSIFIER_ACTIONS = (OUTPUT_BLOCK, OUTPUT_FLAG_PRIVATE)
"""What a generated image the replica's classifier judged above its threshold becomes: withheld (the
request fails, nothing is charged) or stored private and flagged."""


class TrainingConsentMode(StrEnum):
    """Whether training use needs an explicit grant (opt_in) or a withdrawal stops it (opt_out)."""

    OPT_IN = "opt_in"
    OPT_OUT = "opt_out"


@dataclass(frozen=True)
class ModerationRule:
    """One pattern of a category; `name` is what a flag records as its rule."""

    category: str
    name: str
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class ModerationPolicy:
    """The default moderation checker's policy: category -> named case-insensitive regexes."""

    rules: tuple[ModerationRule, ...] = ()
    """Checked in order; the first match decides."""

    keep_prompt: bool = False
    """Store the full prompt in a flag row; off, only its SHA-256 is kept."""

    check_outputs: bool = True
    """Also check stored items (their prompts) as outputs; a match flags the item private."""

    output_classifier_action: str = OUTPUT_FLAG_PRIVATE
    """A generated image the replica's image classifier judged at or above its threshold: "block" withholds
    the request's images (FAILED_PRECONDITION OUTPUT_BLOCKED, nothing charged), "flag_private" stores it
    private and flagged. Either leaves a moderation flag."""

    def __post_init__(self) -> None:
        if self.output_classifier_action not in OUTPUT_CLASSIFIER_ACTIONS:
            raise ConfigError(
                "moderation.output_classifier_action",
                f"is {self.output_classifier_action!r}; valid values: {', '.join(OUTPUT_CLASSIFIER_ACTIONS)}",
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, where: str) -> ModerationPolicy:
        """Builds a policy from `{"categories": {cat: {rule: regex}}, "keep_prompt": b, "check_outputs": b,
        "output_classifier_action": "block"|"flag_private"}`.

        Raises:
            ConfigError: Unknown keys, bad names or an invalid regex; the message names it.
        """
        _check_keys(
            values, {"categories", "keep_prompt", "check_outputs", "output_classifier_action"}, f"{where}.moderation"
        )
        categories = values.get("categories", {})
        if not isinstance(categories, Mapping):
            raise ConfigError(f"{where}.moderation.categories", "must be an object of category -> {rule: regex}")
        rules: list[ModerationRule] = []
        for category, patterns in categories.items():
            if not isinstance(patterns, Mapping) or not _NAME.match(str(category).replace("_", "-")):
                raise ConfigError(f"{where}.moderation.categories.{category}", "must map rule names to regexes")
            for name, pattern in patterns.items():
                try:
                    compiled = re.compile(str(pattern), re.IGNORECASE)
                except re.error as error:
                    raise ConfigError(
                        f"{where}.moderation.categories.{category}.{name}", f"is not a regex: {error}"
                    ) from None
                rules.append(ModerationRule(str(category), str(name), compiled))
        return cls(
            rules=tuple(rules),
            keep_prompt=_bool(values.get("keep_prompt", False), f"{where}.moderation.keep_prompt"),
            check_outputs=_bool(values.get("check_outputs", True), f"{where}.moderation.check_outputs"),
            output_classifier_action=str(values.get("output_classifier_action", OUTPUT_FLAG_PRIVATE)),
        )


@dataclass(frozen=True)
class PolicyProfile:
    """Every rule a deployment's privacy policy sets. Defaults are the product's (DESIGN.md §5)."""

    name: str = DEFAULT_PROFILE_NAME
    """Profile name: lowercase letters, digits and dashes."""

    policy_version: str = "2026-01"
    """Version of the privacy policy text; recorded with every consent, 1..50 characters."""

    default_visibility: str = "private"
    """Visibility of new accounts' content: "private" or "public"."""

    training_consent_mode: TrainingConsentMode = TrainingConsentMode.OPT_IN
    """"opt_in": no training use without a grant; "opt_out": eligible unless withdrawn."""

    private_content_in_training: bool = False
    """Private content may be exported for training (with consent); off: only public content.
    The opt-out profiles of seeds 001 and 004 turn it on: "by default ... may be used to improve
    models", private or not, until the account or item opts out (DESIGN.md §9)."""

    minimum_age: int = 13
    """Youngest age, in whole years, at which an account may be created (0..150)."""

    guardian_age: int | None = None
    """Accounts younger than this (years) need a guardian's consent before they can generate;
    None turns the rule off."""

    generated_retention_days: int | None = 30
    """Days generated images are kept before the retention sweep; None keeps them."""

    generated_retention_tiers: tuple[str, ...] = ("free",)
    """Tiers the generated-image retention applies to."""

    inactivity_purge_days: int | None = 90
    """Days of inactivity after which an account's generated images are deleted; None: never."""

    inactivity_exempt_tiers: tuple[str, ...] = ("premium",)
    """Tiers exempt from the inactivity purge."""

    upload_lifetime_hours: int = 24
    """Hours uploads for editing are kept (1..8760)."""

    deleted_purge_days: int = 30
    """Days after a user's delete within which row and blob (and backups) are purged (0..365)."""

    usage_retention_days: int = 730
    """Days aggregated usage data is kept (1..3650)."""

    dsr_due_days: int = 30
    """Days within which a data-subject request must be answered (1..90)."""

    moderation: ModerationPolicy = field(default_factory=lambda: DEFAULT_MODERATION)
    """Prompt and output moderation policy."""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError("name", f"is {self.name!r}; use lowercase letters, digits and dashes")
        if not 1 <= len(self.policy_version) <= 50:
            raise ConfigError("policy_version", "must be 1..50 characters")
        if self.default_visibility not in _VISIBILITIES:
            raise ConfigError("default_visibility", f"is {self.default_visibility!r}; valid values: private, public")
        if not isinstance(self.training_consent_mode, TrainingConsentMode):
            raise ConfigError("training_consent_mode", "valid values: opt_in, opt_out")
        _range("minimum_age", self.minimum_age, 0, 150)
        if self.guardian_age is not None:
            _range("guardian_age", self.guardian_age, self.minimum_age + 1, 150)
        for name in ("generated_retention_days", "inactivity_purge_days"):
            value = getattr(self, name)
            if value is not None:
                _range(name, value, 1, 3650)
        for name in ("generated_retention_tiers", "inactivity_exempt_tiers"):
            tiers = getattr(self, name)
            if not set(tiers) <= set(_TIERS):
                raise ConfigError(name, f"is {list(tiers)!r}; valid values: {', '.join(_TIERS)}")
        _range("upload_lifetime_hours", self.upload_lifetime_hours, 1, 8760)
        _range("deleted_purge_days", self.deleted_purge_days, 0, 365)
        _range("usage_retention_days", self.usage_retention_days, 1, 3650)
        _range("dsr_due_days", self.dsr_due_days, 1, 90)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, where: str) -> PolicyProfile:
        """Builds a profile from parsed JSON; absent keys keep the product defaults.

        Raises:
            ConfigError: Unknown keys or invalid values; the message names `where` and the key.
        """
        known = {f.name for f in fields(cls)}
        _check_keys(values, known | {"description"}, where)
        kwargs: dict[str, Any] = {k: v for k, v in values.items() if k in known}
        try:
            if "training_consent_mode" in kwargs:
                kwargs["training_consent_mode"] = TrainingConsentMode(kwargs["training_consent_mode"])
            for name in ("generated_retention_tiers", "inactivity_exempt_tiers"):
                if name in kwargs:
                    kwargs[name] = tuple(kwargs[name])
            if "moderation" in kwargs:
                kwargs["moderation"] = ModerationPolicy.from_mapping(kwargs["moderation"], where=where)
            return cls(**kwargs)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error.setting}", error.detail) from None
        except (TypeError, ValueError) as error:
            raise ConfigError(where, f"has an invalid value: {error}") from None

    @classmethod
    def from_file(cls, path: Path) -> PolicyProfile:
        """Loads a profile JSON file; its `name` defaults to the file's stem.

        Raises:
            ConfigError: Unreadable, not JSON, or invalid.
        """
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ConfigError(str(path), f"is not a readable JSON policy profile: {error}") from None
        if not isinstance(values, dict):
            raise ConfigError(str(path), "must hold a JSON object")
        values.setdefault("name", path.stem)
        return cls.from_mapping(values, where=str(path))

    def needs_guardian(self, age: int) -> bool:
        """Whether an account of `age` needs a guardian's consent under this profile."""
        return self.guardian_age is not None and age < self.guardian_age


@dataclass(frozen=True)
class PolicyRegistry:
    """The profiles a cluster serves: its default and every named file, loaded once."""

    default: PolicyProfile
    named: Mapping[str, PolicyProfile] = field(default_factory=dict)

    def get(self, name: str) -> PolicyProfile:
        """The profile called `name` ("default": the cluster's default).

        Raises:
            ConfigError: No profile of that name is loaded. Never a silent fall-back to the
                defaults: a tenant on a retention or consent rule it did not choose is a privacy
                failure, so `bootstrap` refuses to start while a tenant names an unknown profile.
        """
        if name == DEFAULT_PROFILE_NAME:
            return self.default
        profile = self.named.get(name)
        if profile is None:
            raise ConfigError("policy_profile", f"{name!r} is not a loaded profile; known: {self.known_names()}")
        return profile

    def known_names(self) -> str:
        """The names `get` accepts, comma-separated, for error messages."""
        return ", ".join([DEFAULT_PROFILE_NAME, *sorted(self.named)])

    def check_tenants(self, conn: Connection) -> None:
        """Checks that every tenant follows a loaded profile.

        Raises:
            ConfigError: A tenant names a profile that is not loaded (its file was removed, or
                `ATELIER_POLICY_DIR` points elsewhere); the message names the tenants and profiles.
        """
        rows = conn.execute(
            "SELECT policy_profile, string_agg(name, ', ' ORDER BY name) FROM tenants GROUP BY policy_profile"
        ).fetchall()
        unknown = [f"{profile!r} (tenants {names})" for profile, names in rows if not self.has(profile)]
        if unknown:
            raise ConfigError(
                "policy_profile",
                f"{'; '.join(unknown)} not loaded from the policy directory; known: {self.known_names()}. "
                "Restore the profile file or move the tenants to a known profile.",
            )

    def has(self, name: str) -> bool:
        """Whether `name` is "default" or a loaded profile."""
        return name == DEFAULT_PROFILE_NAME or name in self.named

    def for_tenant(
        self, conn: Connection, tenant_id: UUID, cache: TtlCache[UUID, str | None] | None = None
    ) -> PolicyProfile:
        """The profile the tenant's accounts follow.

        Args:
            cache: Profile names read recently, by tenant (see `caller_facts`); None reads
                the database.
        """

        def profile_name() -> str | None:
            row = conn.execute("SELECT policy_profile FROM tenants WHERE tenant_id = %s", (tenant_id,)).fetchone()
            return row[0] if row is not None else None

        name = profile_name() if cache is None else cache.get_or_load(tenant_id, profile_name)
        return self.get(name) if name is not None else self.default

    @classmethod
    def load(cls, *, profile: str | None, directory: Path | None, base: PolicyProfile) -> PolicyRegistry:
        """Loads every `*.json` profile in `directory` and picks the default.

        Args:
            profile: The cluster's profile: a name in `directory`, a path to a file, or None
                for `base`.
            directory: Folder of named profiles; None or missing loads none.
            base: The default when `profile` is None (product defaults with the config's
                overrides).

        Raises:
            ConfigError: A file is invalid, or `profile` names no file.
        """
        named: dict[str, PolicyProfile] = {}
        if directory is not None and directory.is_dir():
            for path in sorted(directory.glob("*.json")):
                loaded = PolicyProfile.from_file(path)
                named[loaded.name] = loaded
        default = base
        if profile:
            if profile in named:
                default = named[profile]
            elif Path(profile).is_file():
                default = PolicyProfile.from_file(Path(profile))
                named.setdefault(default.name, default)
            else:
                choices = ", ".join(sorted(named)) or "none found"
                raise ConfigError("policy_profile", f"is {profile!r}: neither a known profile ({choices}) nor a file")
        return cls(default=default, named=named)


def _range(setting: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(setting, f"is {value!r}; valid values: {low}..{high}")


def _bool(value: object, setting: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(setting, f"is {value!r}; valid values: true, false")
    return value


def _check_keys(values: Mapping[str, Any], allowed: set[str] | Sequence[str], where: str) -> None:
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ConfigError(where, f"has unknown keys {', '.join(unknown)}; valid keys: {', '.join(sorted(allowed))}")


# The product's default moderation policy (DESIGN.md §5: moderation on).
DEFAULT_MODERATION: ModerationPolicy = ModerationPolicy.from_mapping(
    {
        "categories": {
            "sexual_minors": {
                "minor_sexual": r"\b(child|children|kid|minor|underage|preteen)\b.*\b(nude|naked|sexual|explicit)\b",
            },
            "violence": {"gore": r"\b(gore|beheading|dismember\w*)\b"},
        }
    },
    where="default",
)
