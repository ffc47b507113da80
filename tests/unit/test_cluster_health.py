"""What `atelier status` and `atelier up` conclude from the components' answers."""

from __future__ import annotations

from atelier.health import Check, ClusterHealth, PoolHealth, _serve_and_pools
from atelier.launcher import summarize_deploy_failure

OK = Check(ok=True, detail="fine")

RAY_REPLICA_FAILURE = """The deployment failed to start 3 times in a row. This may be due to a problem with its \
constructor or initial health check failing. See controller logs for details. Error:
ray::ServeReplica:atelier:DiffusionModel-tiny-sd.initialize_and_get_metadata() (pid=4242, ip=127.0.0.1)
  File "/srv/inference/deployments/diffusion_model.py", line 61, in __init__
    self._pipeline = load_pipeline(model)
FileNotFoundError: no checkpoint at /models/missing: set checkpoint to a diffusers folder
"""


def _serve_answer(replica_states: list[str], target: int) -> dict[str, object]:
    return {
        "applications": {
            "atelier": {
                "status": "RUNNING",
                "deployments": {
                    "Gateway": {"target_num_replicas": 1, "replicas": [{"state": "RUNNING"}]},
                    "DiffusionModel-tiny-sd": {
                        "target_num_replicas": target,
                        "replicas": [{"state": state} for state in replica_states],
                    },
                },
            }
        }
    }


class TestPools:
    def test_a_pool_without_running_replica_makes_the_cluster_unhealthy(self) -> None:
        serve, pools = _serve_and_pools(_serve_answer(["STARTING"], 1), "SERVING", {"tiny-sd": ["tiny-sd"]})
        assert serve.ok
        assert [(p.name, p.running, p.target, p.models, p.ok) for p in pools] == [("tiny-sd", 0, 1, ["tiny-sd"], False)]
        health = ClusterHealth(database=OK, control_plane=OK, ray=OK, serve=serve, pools=pools)
        assert not health.healthy
        assert health.to_json()["pools"][0] == {
            "name": "tiny-sd",
            "running": 0,
            "target": 1,
            "models": ["tiny-sd"],
            "ok": False,
        }

    def test_a_pool_scaled_to_zero_on_purpose_is_healthy(self) -> None:
        assert PoolHealth(name="sd", running=0, target=0, models=[]).ok

    def test_no_application_is_unhealthy_serve(self) -> None:
        serve, pools = _serve_and_pools({"applications": {}}, "UNAVAILABLE", {})
        assert (serve.ok, pools) == (False, [])

    def test_a_slow_dashboard_leaves_the_verdict_to_the_grpc_proxy(self) -> None:
        for proxy, healthy in (("SERVING", True), ("NOT_SERVING", False)):
            serve, pools = _serve_and_pools("Serve's status did not answer (timed out)", proxy, {})
            assert (serve.ok, pools) == (healthy, [])


class TestDatabaseDown:
    def test_a_stopped_database_makes_the_cluster_unhealthy_and_says_so(self) -> None:
        down = Check(ok=False, detail="embedded PostgreSQL is not running")
        serve, pools = _serve_and_pools(_serve_answer(["RUNNING"], 1), "SERVING", {})
        health = ClusterHealth(database=down, control_plane=OK, ray=OK, serve=serve, pools=pools)
        as_json = health.to_json()
        assert as_json["healthy"] is False
        assert as_json["database"] == {"ok": False, "detail": "embedded PostgreSQL is not running"}


class TestDeployFailure:
    def test_names_the_model_and_the_exception_in_one_line(self) -> None:
        line = summarize_deploy_failure(
            {"DiffusionModel-tiny-sd": RAY_REPLICA_FAILURE, "Gateway": "Deploying"},
            {"tiny-sd": ["tiny-sd"]},
            "Deploying application atelier failed: Failed to update the deployments ['DiffusionModel-tiny-sd'].",
        )
        assert line == (
            "serve: model tiny-sd failed to deploy: FileNotFoundError: no checkpoint at /models/missing: "
            "set checkpoint to a diffusers folder"
        )

    def test_falls_back_to_serves_first_line_without_deployment_messages(self) -> None:
        line = summarize_deploy_failure({}, {}, "Deploying application atelier failed: boom\nTraceback ...")
        assert line == "serve: the application failed to deploy: Deploying application atelier failed: boom"
