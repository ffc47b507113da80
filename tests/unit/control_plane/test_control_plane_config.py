"""ControlPlaneConfig: defaults, environment variables, and errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane.config import ENV_VARS, ConfigError, ControlPlaneConfig


def test_defaults_are_the_documented_ones() -> None:
    config = ControlPlaneConfig()
    assert config.database_url is None
    assert config.listen_address == "127.0.0.1:50051"
    assert config.metrics_port == 9101
    assert config.home == Path(".atelier")
    assert config.blob_root == Path(".atelier/blobs")
    assert config.embedded_data_dir == Path(".atelier/postgres")
    assert (config.reservation_ttl_s, config.max_reservation_ttl_s) == (600, 3600)
    assert config.default_visibility == "private"
    assert config.minimum_age == 13


def test_environment_overrides_every_field_it_names() -> None:
    config = ControlPlaneConfig.from_env(
        {
            "ATELIER_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/atelier",
            "ATELIER_HOME": "/var/lib/atelier",
            "ATELIER_BLOB_DIR": "/blobs",
            "ATELIER_CONTROL_PLANE_LISTEN": "0.0.0.0:6000",
            "ATELIER_CONTROL_PLANE_METRICS_PORT": "0",
            "ATELIER_RESERVATION_TTL_S": "120",
            "ATELIER_DB_POOL_MAX_SIZE": "4",
            "ATELIER_DEFAULT_VISIBILITY": "public",
            "ATELIER_MINIMUM_AGE": "16",
        }
    )
    assert config.database_url == "postgresql://postgres@127.0.0.1:5432/atelier"
    assert config.home == Path("/var/lib/atelier")
    assert config.blob_root == Path("/blobs")
    assert config.listen_address == "0.0.0.0:6000"
    assert config.metrics_port == 0
    assert config.reservation_ttl_s == 120
    assert config.pool_max_size == 4
    assert config.default_visibility == "public"
    assert config.minimum_age == 16


def test_empty_variables_keep_the_defaults() -> None:
    assert ControlPlaneConfig.from_env({"ATELIER_DATABASE_URL": "", "ATELIER_HOME": "  "}) == ControlPlaneConfig()


def test_every_field_has_an_environment_variable() -> None:
    assert set(ENV_VARS) == set(ControlPlaneConfig.__dataclass_fields__)


@pytest.mark.parametrize(
    ("environ", "named", "valid"),
    [
        ({"ATELIER_CONTROL_PLANE_METRICS_PORT": "lots"}, "ATELIER_CONTROL_PLANE_METRICS_PORT", "whole number"),
        ({"ATELIER_CONTROL_PLANE_METRICS_PORT": "70000"}, "ATELIER_CONTROL_PLANE_METRICS_PORT", "0..65535"),
        ({"ATELIER_DEFAULT_VISIBILITY": "friends"}, "ATELIER_DEFAULT_VISIBILITY", "private, public"),
        ({"ATELIER_CONTROL_PLANE_LISTEN": "50051"}, "ATELIER_CONTROL_PLANE_LISTEN", "host:port"),
        ({"ATELIER_RESERVATION_TTL_S": "7200"}, "ATELIER_RESERVATION_TTL_S", "1..3600"),
        ({"ATELIER_MINIMUM_AGE": "-1"}, "ATELIER_MINIMUM_AGE", "0..150"),
        ({"ATELIER_CALLER_CACHE_TTL_MS": "120000"}, "ATELIER_CALLER_CACHE_TTL_MS", "0..60000"),
        ({"ATELIER_BLOB_URL": "gs://bucket/x"}, "ATELIER_BLOB_URL", "s3://bucket/prefix or file:///absolute/path"),
        ({"ATELIER_BLOB_URL": "s3://B_ad/x"}, "ATELIER_BLOB_URL", "3..63 of [a-z0-9.-]"),
        ({"ATELIER_BLOB_URL": "s3://bucket/../x"}, "ATELIER_BLOB_URL", "prefix segment"),
        ({"ATELIER_BLOB_URL": "file://relative/blobs"}, "ATELIER_BLOB_URL", "absolute local path"),
        (
            {"ATELIER_BLOB_URL": "file:///a", "ATELIER_BLOB_DIR": "/b"},
            "ATELIER_BLOB_URL",
            "set one of them",
        ),
    ],
)
def test_a_bad_variable_is_named_with_its_valid_values(environ: dict[str, str], named: str, valid: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ControlPlaneConfig.from_env(environ)
    assert named in str(caught.value)
    assert valid in str(caught.value)


def test_pool_max_below_min_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match="pool_max_size"):
        ControlPlaneConfig(pool_min_size=8, pool_max_size=4)


def test_config_is_immutable() -> None:
    config = ControlPlaneConfig()
    with pytest.raises(AttributeError):
        config.metrics_port = 1  # type: ignore[misc]


class TestBlobUrl:
    def test_unset_keeps_the_local_directory_under_home(self) -> None:
        config = ControlPlaneConfig(home=Path("/srv/atelier"))
        assert config.blob_object_store_url is None
        assert config.blob_root == Path("/srv/atelier/blobs")

    def test_a_file_url_names_the_local_directory(self) -> None:
        config = ControlPlaneConfig.from_env({"ATELIER_BLOB_URL": "file:///var/lib/atelier/blobs"})
        assert config.blob_object_store_url is None
        assert config.blob_root == Path("/var/lib/atelier/blobs")

    def test_an_s3_url_selects_the_object_store(self) -> None:
        config = ControlPlaneConfig.from_env(
            {"ATELIER_BLOB_URL": "s3://atelier-content/prod/blobs", "ATELIER_BLOB_DIR": "/unused"}
        )
        assert config.blob_object_store_url == "s3://atelier-content/prod/blobs"
