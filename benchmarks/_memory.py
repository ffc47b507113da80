"""Resident memory of every process of a local cluster, sampled over time, and its trend.

A soak asks whether any process grows without bound. The processes are found again at every sample,
since Ray starts workers and PostgreSQL backends come and go: the control plane's and the Ray head's
sessions (Ray's GCS, raylet, dashboard, Serve controller, proxy and replicas all stay in the head's
session, see `atelier._processes.stop_session`) and the embedded PostgreSQL postmaster with its children
(which start sessions of their own).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from atelier.state import ClusterState

_MB = 1024 * 1024


@dataclass(frozen=True)
class Sample:
    """One process's resident set size at one moment."""

    elapsed_s: float
    """Seconds since the soak started."""
    pid: int
    label: str
    """What the process is: `control-plane`, `gcs_server`, `ray::ServeReplica:atelier:Gateway`, ..."""
    rss_mb: float
    private_mb: float
    """Resident pages no other process maps (RSS less file-backed and shared memory): where a leak of
    the process's own heap shows. RSS also counts shared pages, e.g. PostgreSQL's shared buffers, which
    each backend's RSS takes in as it touches them, up to `shared_buffers`."""


@dataclass(frozen=True)
class MemoryTrend:
    """How one process's resident memory moved over a soak."""

    pid: int
    label: str
    samples: int
    first_mb: float
    last_mb: float
    max_mb: float
    slope_mb_per_hour: float
    """RSS: least-squares slope over the second half of the soak (the first half includes warm-up)."""
    first_private_mb: float
    last_private_mb: float
    private_slope_mb_per_hour: float
    """Private memory: least-squares slope over the second half."""
    growing: bool
    """The private memory's slope exceeds the growth threshold it was judged against."""


def cluster_pids(state: ClusterState, home: Path) -> list[int]:
    """Every live process of the cluster started from `home` (the calling process excluded)."""
    leaders = {pid for pid in (state.control_plane_pid, state.ray_head_pid) if pid is not None}
    pids: set[int] = set()
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) in leaders:
                pids.add(process.pid)
        except (ProcessLookupError, PermissionError):
            continue
    postmaster = _postmaster_pid(home / "postgres") if state.embedded_database else None
    if postmaster is not None:
        try:
            parent = psutil.Process(postmaster)
            pids.add(postmaster)
            pids.update(child.pid for child in parent.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    pids.discard(os.getpid())
    return sorted(pids)


def sample_rss(pids: Iterable[int], elapsed_s: float) -> list[Sample]:
    """The RSS of each of `pids` still alive, labelled by what it is."""
    samples = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                memory = process.memory_info()
                label = process_label(process.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        # On Linux `shared` is RssFile + RssShmem, so the rest is the anonymous, private part.
        private = memory.rss - getattr(memory, "shared", 0)
        samples.append(Sample(elapsed_s, pid, label, rss_mb=memory.rss / _MB, private_mb=private / _MB))
    return samples


def process_label(cmdline: Sequence[str]) -> str:
    """A short, stable name for a cluster process from its command line.

    Ray workers retitle themselves `ray::<actor>` (with `.<method>` while a method runs, dropped here)
    and the dashboard's modules `ray-dashboard-<Module>-0 (...)`; PostgreSQL's processes `postgres:
    <role>` (a client backend's title, which changes with its state, is shortened to `postgres:
    backend`); the rest are named by their Python module or script, or their executable.
    """
    if not cmdline:
        return "?"
    first = cmdline[0]
    if first.startswith("ray::"):
        title = first.split()[0]
        head, _, tail = title.rpartition(".")
        return head if head and tail.isidentifier() and tail[:1].islower() else title
    if first.startswith("postgres:"):
        role = first.removeprefix("postgres:").strip()
        known = ("checkpointer", "background writer", "walwriter", "autovacuum", "logical replication")
        return f"postgres: {role}" if role.startswith(known) else "postgres: backend"
    if " " in first or (len(cmdline) > 1 and cmdline[1].startswith("(")):  # retitled: its title's first word
        return first.split()[0]
    names = [Path(arg).name for arg in cmdline]
    if "ray" in names[:2] and "start" in cmdline:
        return "ray start (head)"
    if "-m" in cmdline[:-1]:
        module = cmdline[cmdline.index("-m") + 1]
        return "control-plane" if module == "control_plane" else module
    if "-c" in cmdline[:-1]:
        code = cmdline[cmdline.index("-c") + 1]
        _, found, rest = code.partition("from ")
        return f"python -c {rest.split()[0]}" if found and rest else "python -c"
    scripts = [name for name in names[1:] if name.endswith(".py")]
    if scripts:
        return scripts[0]
    if names[0] == "postgres":
        return "postgres: postmaster"
    return names[0]


GROWTH_FLOOR_MB = 2.0
"""The fitted rise over the second half must exceed this for a process to count as growing: a short run
extrapolates a few hundred kB of allocator noise to a steep hourly slope."""


def memory_trends(
    samples: Sequence[Sample], duration_s: float, growth_mb_per_hour: float, growth_fraction_per_hour: float
) -> list[MemoryTrend]:
    """Per process: first, last and max RSS, and least-squares slopes over the second half.

    A process is `growing` when the slope of its private memory exceeds both `growth_mb_per_hour` and
    `growth_fraction_per_hour` of its first RSS (so neither a few MB of noise on a small process nor
    allocator noise on a large one is flagged), and the fitted rise over the second half exceeds
    `GROWTH_FLOOR_MB`. Private memory, not RSS: shared pages (PostgreSQL's shared buffers, mapped
    weights) are bounded by what is mapped. Processes seen in fewer than 3 second-half samples get a
    slope of 0.
    """
    by_process: dict[int, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_process[sample.pid].append(sample)
    trends = []
    for pid, series in by_process.items():
        series.sort(key=lambda s: s.elapsed_s)
        label = series[0].label
        second_half = [s for s in series if s.elapsed_s >= duration_s / 2]
        enough = len(second_half) >= 3
        slope = _slope_per_hour(second_half, "rss_mb") if enough else 0.0
        private_slope = _slope_per_hour(second_half, "private_mb") if enough else 0.0
        span_h = (second_half[-1].elapsed_s - second_half[0].elapsed_s) / 3600 if second_half else 0.0
        first = series[0].rss_mb
        trends.append(
            MemoryTrend(
                pid=pid,
                label=label,
                samples=len(series),
                first_mb=round(first, 1),
                last_mb=round(series[-1].rss_mb, 1),
                max_mb=round(max(s.rss_mb for s in series), 1),
                slope_mb_per_hour=round(slope, 2),
                first_private_mb=round(series[0].private_mb, 1),
                last_private_mb=round(series[-1].private_mb, 1),
                private_slope_mb_per_hour=round(private_slope, 2),
                growing=private_slope > max(growth_mb_per_hour, growth_fraction_per_hour * first)
                and private_slope * span_h > GROWTH_FLOOR_MB,
            )
        )
    return sorted(trends, key=lambda t: (t.label, t.pid))


def _slope_per_hour(series: Sequence[Sample], field: str) -> float:
    xs = [s.elapsed_s for s in series]
    ys = [getattr(s, field) for s in series]
    mean_x = sum(xs) / len(xs)
    mean_y = sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread * 3600


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None
