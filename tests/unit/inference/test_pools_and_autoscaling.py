"""Pools (several models sharing replicas), autoscaling settings and builtin model variants."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.app import build_app, model_deployment_name
from inference.config import ConfigError, ModelConfig, PoolConfig, ServeConfig
from inference.models import ModelSource, parse_builtin, resolve_model_dir, tiny_sd_dir_name


class TestPools:
    def test_models_a_pool_names_share_it_and_others_get_their_own(self) -> None:
        config = ServeConfig(
            models=(ModelConfig(name="a"), ModelConfig(name="b", source="tiny-sd@seed=1"), ModelConfig(name="c")),
            pools=(PoolConfig(name="tiny", models=("a", "b")),),
        )
        assert [(pool.name, [m.name for m in members]) for pool, members in config.model_pools()] == [
            ("tiny", ["a", "b"]),
            ("c", ["c"]),
        ]
        assert model_deployment_name(config.models[1], config) == "DiffusionModel-tiny"
        assert model_deployment_name(config.models[2], config) == "DiffusionModel-c"

    def test_models_of_one_pool_must_agree_on_replica_settings(self) -> None:
        with pytest.raises(ConfigError, match=r"models\[b\]\.num_cpus.*pool 'tiny'"):
            ServeConfig(
                models=(ModelConfig(name="a"), ModelConfig(name="b", num_cpus=2)),
                pools=(PoolConfig(name="tiny", models=("a", "b")),),
            )

    @pytest.mark.parametrize(
        ("pools", "named"),
        [
            ([{"name": "p", "models": ["nope"]}], "pools[p].models"),
            ([{"name": "p", "models": ["a"]}, {"name": "q", "models": ["a"]}], "one pool only"),
            ([{"name": "p", "models": ["a"], "color": "red"}], "unknown pool settings"),
        ],
    )
    def test_bad_pools_name_the_setting(self, pools: list, named: str) -> None:  # type: ignore[type-arg]
        with pytest.raises(ConfigError) as raised:
            ServeConfig.from_dict({"models": [{"name": "a"}], "pools": pools})
        assert named in str(raised.value)

    def test_pools_read_from_json(self) -> None:
        config = ServeConfig.from_dict(
            {
                "models": [{"name": "a"}],
                "pools": [{"name": "p", "models": ["a"], "max_models_per_replica": 1, "resources": {"pool_p": 1}}],
            }
        )
        pool = config.pool_of(config.models[0])
        assert (pool.name, pool.models, pool.max_models_per_replica, pool.resources) == ("p", ("a",), 1, {"pool_p": 1})


class TestAutoscaling:
    def test_off_by_default(self) -> None:
        assert PoolConfig(name="p", models=("m",)).autoscaling_config() is None

    def test_settings_become_serves_autoscaling_config(self) -> None:
        pool = PoolConfig(
            name="p",
            models=("m",),
            min_replicas=1,
            max_replicas=4,
            target_ongoing_requests=3,
            upscale_delay_s=1,
            downscale_delay_s=5,
        )
        assert pool.autoscaling_config() == {
            "min_replicas": 1,
            "max_replicas": 4,
            "target_ongoing_requests": 3,
            "upscale_delay_s": 1,
            "downscale_delay_s": 5,
        }

    @pytest.mark.parametrize(
        ("settings", "named"),
        [
            ({"max_replicas": 2, "min_replicas": 3}, "min_replicas"),
            ({"max_replicas": 2, "target_ongoing_requests": 0}, "target_ongoing_requests"),
            ({"max_replicas": 2, "upscale_delay_s": -1}, "upscale_delay_s"),
            ({"max_replicas": -1}, "max_replicas"),
            ({"resources": {"pool_x": -1}}, "resources"),
            ({"max_models_per_replica": 0}, "max_models_per_replica"),
        ],
    )
    def test_out_of_range_settings_name_the_setting(self, settings: dict, named: str) -> None:  # type: ignore[type-arg]
        with pytest.raises(ConfigError, match=named):
            PoolConfig(name="p", models=("m",), **settings)

    def test_app_deploys_each_pool_with_its_scaling_and_placement(self) -> None:
        config = ServeConfig(
            models=(ModelConfig(name="a"), ModelConfig(name="b")),
            pools=(PoolConfig(name="p", models=("a", "b"), max_replicas=3, resources={"pool_p": 1}),),
        )
        gateway = build_app(config)
        (pool,) = gateway._bound_deployment.init_args[1].values()  # the DiffusionModel pool bound into the gateway
        deployment = pool._bound_deployment
        assert deployment.name == "DiffusionModel-p"
        assert deployment._deployment_config.autoscaling_config.max_replicas == 3
        assert deployment.ray_actor_options["resources"] == {"pool_p": 1}


class TestBuiltinVariants:
    @pytest.mark.parametrize(
        ("setting", "parsed"),
        [("tiny-sd", ("tiny-sd", 0)), ("tiny-sd@seed=1", ("tiny-sd", 1)), ("tiny-sd@seed=x", None), ("/m", None)],
    )
    def test_setting_parses_to_name_and_seed(self, setting: str, parsed: tuple[str, int] | None) -> None:
        assert parse_builtin(setting) == parsed

    def test_variant_builds_its_own_weights(self, tmp_path: Path) -> None:
        directory = resolve_model_dir(ModelSource.from_setting("tiny-sd@seed=1", tmp_path))
        assert directory.name == tiny_sd_dir_name(1)
