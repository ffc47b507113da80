"""benchmarks/load.py's rules: the knee, the latency summary, the growth flag and the process names."""

from __future__ import annotations

import argparse

import pytest

from benchmarks._memory import Sample, memory_trends, process_label
from benchmarks.load import Outcome, RequestMix, holds_goodput, keeps_up, summarize


def _outcomes(latencies_s: list[float], errors: int = 0) -> list[Outcome]:
    ok = [
        Outcome("generate", scheduled_s=i * 0.1, latency_s=latency, code="OK") for i, latency in enumerate(latencies_s)
    ]
    return ok + [Outcome("stream", scheduled_s=0.0, latency_s=1.0, code="UNAVAILABLE") for _ in range(errors)]


class TestSummary:
    def test_percentiles_and_throughput_come_from_ok_replies_and_errors_are_counted_by_code(self) -> None:
        row = summarize(_outcomes([0.1] * 98 + [0.5, 2.0], errors=2), offered_rps=10.0, duration_s=10.0)
        assert (row["sent"], row["ok"], row["errors"]) == (102, 100, {"UNAVAILABLE": 2})
        assert (row["p50_ms"], row["p99_ms"]) == (100.0, 500.0)
        # The last reply lands at 9.9 s + 2 s: throughput counts until then, not until the arrivals stop.
        assert row["achieved_rps"] == pytest.approx(100 / 11.9, rel=1e-3)
        assert row["sent_rps"] == 10.2

    def test_the_first_progress_of_streams_is_summarized_per_kind(self) -> None:
        outcomes = [Outcome("stream", 0.0, 0.4, "OK", first_progress_s=0.1), Outcome("balance", 0.0, 0.01, "OK")]
        by_kind = summarize(outcomes, 1.0, 1.0)["by_kind"]
        assert by_kind["stream"]["first_progress_p50_ms"] == 100.0
        assert "first_progress_p50_ms" not in by_kind["balance"]


class TestKneeRule:
    def _row(self, **changes: object) -> dict[str, object]:
        row = {"ok": 100, "sent_rps": 10.0, "offered_rps": 10.0, "achieved_rps": 9.5, "error_fraction": 0.0}
        return {**row, "p99_ms": 400.0, **changes}

    def test_a_service_that_tracks_the_load_within_the_bound_keeps_up(self) -> None:
        assert keeps_up(self._row(), p99_bound_ms=500)

    @pytest.mark.parametrize(
        "changes",
        [{"achieved_rps": 8.9}, {"error_fraction": 0.02}, {"p99_ms": 501.0}, {"ok": 0, "p99_ms": None}],
        ids=["throughput-falls-behind", "errors", "tail-latency", "nothing-answered"],
    )
    def test_a_service_past_the_knee_does_not_keep_up(self, changes: dict[str, object]) -> None:
        assert not keeps_up(self._row(**changes), p99_bound_ms=500)


_KNEE = {"achieved_rps": 20.0, "p99_ms": 500.0}


class TestOverloadRule:
    def _row(self, **changes: object) -> dict[str, object]:
        return {"achieved_rps": 19.0, "p99_ms": 900.0, "errors": {"UNAVAILABLE": 300}, **changes}

    def test_goodput_kept_with_the_excess_refused_holds(self) -> None:
        verdict = holds_goodput(self._row(), _KNEE)
        assert verdict == {"goodput_vs_knee": 0.95, "p99_vs_knee": 1.8, "other_errors": 0, "holds": True}

    @pytest.mark.parametrize(
        "changes",
        [{"achieved_rps": 17.9}, {"p99_ms": 1001.0}, {"errors": {"UNAVAILABLE": 3, "DEADLINE_EXCEEDED": 1}}],
        ids=["goodput-collapses", "admitted-tail-grows", "errors-other-than-refusals"],
    )
    def test_an_overload_that_loses_goodput_does_not_hold(self, changes: dict[str, object]) -> None:
        assert not holds_goodput(self._row(**changes), _KNEE)["holds"]

    def test_refusal_latency_is_summarized_apart_from_ok_replies(self) -> None:
        row = summarize(_outcomes([0.1] * 10, errors=4), offered_rps=1.0, duration_s=10.0)
        assert (row["refusal_p50_ms"], row["refusal_p99_ms"]) == (1000.0, 1000.0)
        assert summarize(_outcomes([0.1]), 1.0, 1.0)["refusal_p99_ms"] is None


class TestRequestMix:
    def test_weights_and_generating_share(self) -> None:
        mix = RequestMix.parse("generate=6,stream=2,balance=2")
        assert mix.generating_share == 0.8

    @pytest.mark.parametrize("text", ["generate=x", "fly=1", "balance=0", "generate=-1"])
    def test_a_bad_mix_is_refused_with_the_flag_named(self, text: str) -> None:
        with pytest.raises(argparse.ArgumentTypeError, match="--mix"):
            RequestMix.parse(text)


class TestMemoryTrends:
    def _series(self, pid: int, rss: list[float], every_s: float = 60.0) -> list[Sample]:
        return [Sample(i * every_s, pid, f"p{pid}", rss_mb=mb, private_mb=mb) for i, mb in enumerate(rss)]

    def test_steady_growth_in_the_second_half_is_flagged_and_warm_up_growth_is_not(self) -> None:
        warm_up_then_flat = self._series(1, [100, 150, 200, 200, 200.2, 200, 200.1])
        leaking = self._series(2, [100, 100, 100, 110, 120, 130, 140])
        trends = {t.pid: t for t in memory_trends(warm_up_then_flat + leaking, 360, 10.0, 0.05)}
        assert not trends[1].growing and abs(trends[1].slope_mb_per_hour) < 10
        assert trends[2].growing and trends[2].slope_mb_per_hour == pytest.approx(600, rel=0.01)
        assert (trends[2].first_mb, trends[2].last_mb, trends[2].max_mb) == (100, 140, 140)

    def test_shared_pages_touched_over_time_are_not_growth(self) -> None:
        # A PostgreSQL backend taking in more of the shared buffers: RSS rises, private memory does not.
        series = [Sample(i * 60.0, 1, "postgres: backend", rss_mb=20 + 2 * i, private_mb=5) for i in range(7)]
        (trend,) = memory_trends(series, 360, 10.0, 0.05)
        assert trend.slope_mb_per_hour == pytest.approx(120) and trend.private_slope_mb_per_hour == 0
        assert not trend.growing

    def test_a_short_run_does_not_flag_noise_extrapolated_to_an_hour(self) -> None:
        noisy = self._series(1, [100, 100.2, 100.4, 100.6, 100.8], every_s=3)
        (trend,) = memory_trends(noisy, 12, 10.0, 0.05)
        assert trend.private_slope_mb_per_hour > 10 and not trend.growing


@pytest.mark.parametrize(
    ("cmdline", "label"),
    [
        (["ray::ServeController.listen_for_change"], "ray::ServeController"),
        (["ray::ServeReplica:atelier:DiffusionModel-sd1.5"], "ray::ServeReplica:atelier:DiffusionModel-sd1.5"),
        (["postgres: postgres atelier [local] idle"], "postgres: backend"),
        (["postgres: checkpointer "], "postgres: checkpointer"),
        (["/venv/bin/python", "-m", "control_plane", "serve"], "control-plane"),
        (["/venv/bin/python3", "/venv/bin/ray", "start", "--head"], "ray start (head)"),
        (["ray-dashboard-NodeHead-0", "(/venv/bin/python3", "-B", "-c", "from x import y"], "ray-dashboard-NodeHead-0"),
        (["/ray/core/src/ray/raylet/raylet", "--raylet_socket_name=/tmp/x"], "raylet"),
        (["/pginstall/bin/postgres", "-D", "/data"], "postgres: postmaster"),
    ],
)
def test_cluster_processes_get_stable_short_names(cmdline: list[str], label: str) -> None:
    assert process_label(cmdline) == label
