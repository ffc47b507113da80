"""Policy profiles: the shipped files load and say what their seeds say; bad files name the fault."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from control_plane.bootstrap import load_policies
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


def test_an_unknown_profile_name_is_an_error_naming_it_and_the_known_ones() -> None:
    registry = PolicyRegistry.load(profile=None, directory=SHIPPED, base=PolicyProfile())
    assert registry.get("default") is registry.default
    with pytest.raises(
        ConfigError, match=r"'retired-profile' is not a loaded profile; known: default, credits-moderated"
    ):
        registry.get("retired-profile")


def test_an_unknown_cluster_profile_names_the_environment_variable(tmp_path: Path) -> None:
    config = ControlPlaneConfig.from_env({"ATELIER_POLICY_PROFILE": "no-such-profile", "ATELIER_HOME": str(tmp_path)})
    with pytest.raises(
        ConfigError, match=r"^ATELIER_POLICY_PROFILE is 'no-such-profile': neither a known profile \(credits-moderated"
    ):
        load_policies(config)


def test_atelier_up_with_an_unknown_profile_exits_at_once_with_one_line(tmp_path: Path) -> None:
    environment = {**os.environ, "ATELIER_HOME": str(tmp_path / "home"), "ATELIER_POLICY_PROFILE": "no-such-profile"}
    result = subprocess.run(
        [sys.executable, "-m", "atelier.cli", "up"], env=environment, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "ATELIER_POLICY_PROFILE is 'no-such-profile'" in result.stderr
    assert not (tmp_path / "home").exists(), "nothing may be started or written"


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
