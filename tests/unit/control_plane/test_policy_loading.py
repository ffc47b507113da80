"""Policy profiles: the shipped files load and say what their seeds say; bad files name the fault."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from control_plane.config import ConfigError, ControlPlaneConfig
from control_plane.moderation import PolicyModerationChecker, Stage, Verdict
from control_plane.policy import PolicyProfile, PolicyRegistry, TrainingConsentMode

SHIPPED = ControlPlaneConfig().policy_root


def _registry() -> PolicyRegistry:
    return PolicyRegistry.load(profile=None, directory=SHIPPED, base=PolicyProfile())


def test_the_product_defaults_are_design_section_5() -> None:
    profile = PolicyProfile()
    assert profile.default_visibility == "private"
    assert profile.training_consent_mode is TrainingConsentMode.OPT_IN
    assert (profile.minimum_age, profile.guardian_age) == (13, None)
    assert (profile.generated_retention_days, profile.generated_retention_tiers) == (30, ("free",))
    assert (profile.inactivity_purge_days, profile.inactivity_exempt_tiers) == (90, ("premium",))
    assert (profile.upload_lifetime_hours, profile.deleted_purge_days, profile.usage_retention_days) == (24, 30, 730)
    assert profile.dsr_due_days == 30 and not profile.private_content_in_training


def test_every_seed_has_a_shipped_profile_with_its_rules() -> None:
    named = _registry().named
    assert set(named) == {
        "opt-in-encrypted-gallery",
        "opt-out-guardian-consent",
        "short-retention-editing",
        "public-by-default",
        "credits-moderated",
    }
    assert named["opt-out-guardian-consent"].guardian_age == 18
    assert named["opt-out-guardian-consent"].training_consent_mode is TrainingConsentMode.OPT_OUT
    assert named["short-retention-editing"].generated_retention_tiers == ("free", "premium")
    assert named["public-by-default"].default_visibility == "public"
    assert named["credits-moderated"].generated_retention_days is None
    assert named["credits-moderated"].inactivity_purge_days == 90


def test_the_cluster_profile_is_picked_by_name_or_path(tmp_path: Path) -> None:
    assert PolicyRegistry.load(profile="public-by-default", directory=SHIPPED, base=PolicyProfile()).default.name == (
        "public-by-default"
    )
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"minimum_age": 16}))
    assert PolicyRegistry.load(profile=str(path), directory=None, base=PolicyProfile()).default.minimum_age == 16
    with pytest.raises(ConfigError, match="policy_profile"):
        PolicyRegistry.load(profile="nope", directory=SHIPPED, base=PolicyProfile())


@pytest.mark.parametrize(
    ("values", "setting"),
    [
        ({"training_consent_mode": "maybe"}, "invalid value"),
        ({"guardian_age": 10}, "guardian_age"),
        ({"surprise": 1}, "surprise"),
        ({"moderation": {"categories": {"x": {"r": "("}}}}, "moderation.categories.x.r"),
        ({"default_visibility": "friends"}, "default_visibility"),
    ],
)
def test_an_invalid_profile_names_the_setting(tmp_path: Path, values: dict, setting: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(values))
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        PolicyProfile.from_file(path)


def test_the_regex_checker_reports_category_and_rule_and_can_skip_outputs() -> None:
    moderation = _registry().named["credits-moderated"].moderation
    checker = PolicyModerationChecker(moderation)
    assert checker.check(Stage.PROMPT, "How to BUILD A BOMB at home") == Verdict("weapons", "explosives")
    assert checker.check(Stage.PROMPT, "a bomb pop ice cream") is None
    assert checker.check(Stage.PROMPT, "a lighthouse at dusk") is None
    quiet = PolicyModerationChecker(
        PolicyProfile.from_mapping({"moderation": {"check_outputs": False}}, where="t").moderation
    )
    assert quiet.check(Stage.OUTPUT, "gore") is None
