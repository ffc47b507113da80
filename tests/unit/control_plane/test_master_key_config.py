"""Where the control plane's master key and policy profile come from."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane import crypto
from control_plane.bootstrap import load_key_store, load_policies
from control_plane.config import ConfigError, ControlPlaneConfig


def test_the_variables_set_the_key_file_key_and_profile(tmp_path: Path) -> None:
    config = ControlPlaneConfig.from_env(
        {
            "ATELIER_MASTER_KEY_FILE": str(tmp_path / "mk"),
            "ATELIER_POLICY_PROFILE": "credits-moderated",
            "ATELIER_POLICY_DIR": str(tmp_path),
        }
    )
    assert config.master_key_path == tmp_path / "mk"
    assert (config.policy_profile, config.policy_root) == ("credits-moderated", tmp_path)
    assert "c2VjcmV0" not in repr(ControlPlaneConfig(master_key="c2VjcmV0"))


def test_without_a_configured_key_one_is_created_under_home_once(tmp_path: Path) -> None:
    config = ControlPlaneConfig(home=tmp_path)
    first = load_key_store(config).master_key_id
    assert oct((tmp_path / "master.key").stat().st_mode & 0o777) == "0o600"
    assert load_key_store(config).master_key_id == first


def test_a_key_in_the_environment_wins_and_a_malformed_one_is_a_config_error(tmp_path: Path) -> None:
    key = crypto.MasterKey.generate()
    assert load_key_store(ControlPlaneConfig(home=tmp_path, master_key=key.to_base64())).master_key_id == key.key_id
    assert not (tmp_path / "master.key").exists()
    with pytest.raises(ConfigError, match="master_key"):
        load_key_store(ControlPlaneConfig(home=tmp_path, master_key="short"))
    with pytest.raises(ConfigError, match="master_key"):
        load_key_store(ControlPlaneConfig(home=tmp_path, master_key_file=tmp_path / "missing"))


def test_the_default_profile_takes_the_configured_visibility_and_minimum_age() -> None:
    policies = load_policies(ControlPlaneConfig(default_visibility="public", minimum_age=16))
    assert (policies.default.default_visibility, policies.default.minimum_age) == ("public", 16)
    assert "credits-moderated" in policies.named
