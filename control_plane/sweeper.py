"""The retention sweeper: deletes what the policy says must go, in bounded, crash-safe batches.

One pass (`run_sweep`) works through every rule:

- `generated_retention`: generated images past the profile's age limit (e.g. free tier, 30 days);
- `inactivity`: generated images of accounts inactive past the limit (e.g. 90 days, not premium);
- `upload_lifetime`: uploads for editing past their lifetime (24 hours);
- `deleted_purge`: soft-deleted items past their purge time (30 days);
- `reservation_expired`: held credit reservations past their expiry (credits given back);
- `usage_retention`: aggregated usage rows older than the profile keeps them (730 days);

and aggregates the finished days' usage into `usage_daily` first.

A content batch is one transaction: `DELETE ... WHERE content_id = ANY(ARRAY(SELECT ... LIMIT n
FOR UPDATE SKIP LOCKED)) RETURNING blob_key`, then the blobs are unlinked, the removal
manifests of exports holding the items are appended and one audit row counts the batch; then
COMMIT. Several sweepers skip each other's locked rows, so they never do the same work. A
crash before COMMIT rolls the rows back, so the next pass takes them again (unlinking a blob
that is already gone is a no-op): nothing is missed and no row is deleted, or counted, twice.
Expired reservations and dropped usage rows get an audit row per batch too. Each batch's audit
row adds its count to `sweep_totals` in the same transaction (a trigger, migration 0013), so the
control plane reads every sweep's totals back from a handful of rows (`control_plane/metrics.py`),
the CronJob's included, whose process is gone before any scrape.
Which items are due is `retention.DEADLINE_SQL`, the same definition training eligibility uses.

Speed: unlinking the blobs is most of a batch's cost (a file system call per item), so one
pass runs each rule's queue with `workers` side-by-side batch loops on their own connections,
exactly as separate sweepers would: while one unlinks, another deletes its next rows in the
database. A batch's unlinks are also spread over a thread pool (`unlink_threads`; `os.unlink`
releases the GIL), since a delete mostly waits on the file system. Each thread hands its slice
of keys to `BlobStore.delete_many`: a directory unlinks them one by one, an object store deletes
them in one `DeleteObjects` request. An object store that cannot be reached fails the batch
(`BlobStoreUnavailable`), so its rows roll back and the next pass takes them again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar
from uuid import uuid4
from weakref import WeakKeyDictionary

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from control_plane import credits, removals
from control_plane.adapters.blobstore import BlobStore
from control_plane.audit import SYSTEM, Actor, record_audit
from control_plane.clock import Clock
from control_plane.db.pool import Connection, Pool, read_for_scrape
from control_plane.errors import InvalidArgument
from control_plane.policy import PolicyRegistry
from control_plane.retention import DEADLINE_SQL, POLICY_CTE, TenantPolicies

_logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 5000
MAX_BATCH_SIZE = 100_000
DEFAULT_WORKERS = 2
"""Batch loops one pass runs side by side per rule (each on its own connection)."""
DEFAULT_UNLINK_THREADS = 4
"""Threads one pass unlinks blobs with; 0 unlinks in the batch loop's own thread. An unlink
waits in the kernel (the journal, a discard on file systems mounted with it) more than it
computes: on this project's CI machines (ext4, online discard) four threads unlinked 50k files
2.4x as fast as one, and made a two-worker pass ~15% faster (benchmarks/sweep.py)."""
_UNLINKS_PER_TASK = 256


class SweepReason(StrEnum):
    """Why an item was deleted: the `reason` label of `atelier_sweep_deleted_items_total`."""

    GENERATED_RETENTION = "generated_retention"
    INACTIVITY = "inactivity"
    UPLOAD_LIFETIME = "upload_lifetime"
    DELETED_PURGE = "deleted_purge"
    RESERVATION_EXPIRED = "reservation_expired"
    USAGE_RETENTION = "usage_retention"


# Candidate rows of each content rule, oldest first, in a form the partial indexes of 0003
# serve: an outer bound (`%(bound)s`: no tenant's deadline can come sooner) on an indexed sort
# key, then DEADLINE_SQL decides exactly. `%(after)s` is where the previous batch of the pass
# stopped (keyset), so rows a rule keeps (say, premium accounts' old images) are walked past
# once per pass, not once per batch. Each entry: profile field of the bound, the sort key as
# DELETE ... RETURNING can name it, and the queue.
_CONTENT_QUEUES: dict[SweepReason, tuple[str, str, str]] = {
    SweepReason.GENERATED_RETENTION: (
        "generated_retention",
        "created_at",
        """
        SELECT c.content_id FROM content c
        JOIN accounts a ON a.account_id = c.account_id JOIN policy p ON p.tenant_id = a.tenant_id
        WHERE c.deleted_at IS NULL AND c.kind = 'generated' AND c.created_at <= %(bound)s
          AND c.created_at >= %(after)s AND {deadline} <= %(now)s
        ORDER BY c.created_at
        """,
    ),
    SweepReason.INACTIVITY: (
        "inactivity_purge",
        "(SELECT last_active_at FROM accounts WHERE accounts.account_id = content.account_id)",
        """
        SELECT c.content_id FROM accounts a
        JOIN policy p ON p.tenant_id = a.tenant_id
        JOIN content c ON c.account_id = a.account_id AND c.deleted_at IS NULL AND c.kind = 'generated'
        WHERE a.status = 'active' AND NOT a.legal_hold AND NOT a.keep AND a.last_active_at <= %(bound)s
          AND a.last_active_at >= %(after)s AND {deadline} <= %(now)s
        ORDER BY a.last_active_at
        """,
    ),
    SweepReason.UPLOAD_LIFETIME: (
        "upload_lifetime",
        "created_at",
        """
        SELECT c.content_id FROM content c
        JOIN accounts a ON a.account_id = c.account_id JOIN policy p ON p.tenant_id = a.tenant_id
        WHERE c.deleted_at IS NULL AND c.kind = 'upload' AND c.created_at <= %(bound)s
          AND c.created_at >= %(after)s AND {deadline} <= %(now)s
        ORDER BY c.created_at
        """,
    ),
    SweepReason.DELETED_PURGE: (
        "deleted_purge",
        "deleted_at",
        """
        SELECT c.content_id FROM content c
        JOIN accounts a ON a.account_id = c.account_id JOIN policy p ON p.tenant_id = a.tenant_id
        WHERE c.deleted_at IS NOT NULL AND c.deleted_at <= %(bound)s AND c.deleted_at >= %(after)s
          AND {deadline} <= %(now)s
        ORDER BY c.deleted_at
        """,
    ),
}


@dataclass
class SweepReport:
    """What one pass did."""

    as_of: datetime
    deleted: dict[SweepReason, int] = field(default_factory=lambda: {reason: 0 for reason in SweepReason})
    """Items (rows with their blobs), reservations or usage rows, by reason."""
    batches: int = 0
    """Committed batches, all rules together."""
    usage_days_aggregated: int = 0
    removals: int = 0
    """Exported items this pass found ineligible and added to removal manifests."""
    seconds: float = 0.0

    @property
    def total(self) -> int:
        """Everything this pass deleted or expired."""
        return sum(self.deleted.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, for `atelier sweep --json`."""
        return {
            "as_of": self.as_of.isoformat(),
            "deleted": {reason.value: count for reason, count in self.deleted.items()},
            "total": self.total,
            "batches": self.batches,
            "usage_days_aggregated": self.usage_days_aggregated,
            "removals": self.removals,
            "seconds": round(self.seconds, 3),
        }


class SweepMetrics:
    """The sweeper's counter, registered once per registry."""

    _by_registry: ClassVar[WeakKeyDictionary[CollectorRegistry, SweepMetrics]] = WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, registry: CollectorRegistry) -> None:
        self.deleted_items = Counter(
            "atelier_sweep_deleted_items",
            "Items the retention sweeper deleted (rows with their blobs), reservations it expired and usage "
            "rows it dropped, by reason.",
            ["reason"],
            registry=registry,
        )

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> SweepMetrics:
        """The metrics registered in `registry` (registering them on first use)."""
        with cls._lock:
            metrics = cls._by_registry.get(registry)
            if metrics is None:
                metrics = cls._by_registry[registry] = cls(registry)
            return metrics


BatchCallback = Callable[[SweepReason, int], None]
"""Called after each committed batch with its reason and size (progress output, tests)."""


def sweep_content_batch(
    conn: Connection,
    blobs: BlobStore,
    reason: SweepReason,
    policies: TenantPolicies,
    *,
    now: datetime,
    limit: int,
    after: datetime | None = None,
    actor: Actor = SYSTEM,
    unlink: Executor | None = None,
) -> tuple[int, datetime | None]:
    """Deletes up to `limit` items due under `reason`'s rule, rows and blobs, in one transaction.

    Args:
        conn: Connection outside a transaction.
        blobs: The (ciphertext) store the items' blobs live in.
        reason: A content rule (not RESERVATION_EXPIRED or USAGE_RETENTION).
        policies: Every tenant's profile.
        now: The sweep's "now"; items whose deadline is at or before it are due.
        limit: Batch size, 1..100000.
        after: Only candidates at or after this sort key (the previous batch's `last_key`);
            None from the start of the queue.
        actor: Who the audit row names.
        unlink: Threads to unlink the blobs with; None unlinks them in this thread.

    Returns:
        How many items this batch deleted (0 when none is due, or all due ones are locked by
        another sweeper), and the largest sort key among them (None when none).
    """
    if not 1 <= limit <= MAX_BATCH_SIZE:
        raise InvalidArgument("batch_size", f"must be 1..{MAX_BATCH_SIZE}")
    field_name, sort_key, queue = _CONTENT_QUEUES[reason]
    shortest = policies.shortest(field_name)
    if shortest is None:
        return 0, None
    params = {
        **policies.params(),
        "now": now,
        "bound": now - shortest,
        "after": after if after is not None else datetime.min.replace(tzinfo=UTC),
        "limit": limit,
    }
    with conn.transaction():
        rows = conn.execute(
            f"""
            WITH {POLICY_CTE}
            DELETE FROM content WHERE content_id = ANY(ARRAY(
                {queue.format(deadline=DEADLINE_SQL)}
                LIMIT %(limit)s FOR UPDATE OF c SKIP LOCKED
            ))
            RETURNING content_id, account_id, blob_key, {sort_key}
            """,
            params,
        ).fetchall()
        if not rows:
            return 0, None
        # Inside the transaction: should it fail after this, the rows come back and the next
        # pass unlinks again, which finds nothing and carries on.
        delete_blobs(blobs, [row[2] for row in rows], unlink)
        content_ids = [row[0] for row in rows]
        conn.execute(removals.LOCK_SQL)
        removed = conn.execute(
            """
            INSERT INTO export_removals (export_id, content_id, reason, removed_at)
            SELECT export_id, content_id, 'swept', %s FROM export_items WHERE content_id = ANY(%s)
            ON CONFLICT (export_id, content_id) DO NOTHING
            """,
            (now, content_ids),
        ).rowcount
        _audit_batch(
            conn,
            reason,
            len(rows),
            now=now,
            actor=actor,
            accounts=len({row[1] for row in rows}),
            export_removals=max(removed, 0),
        )
    return len(rows), max(row[3] for row in rows)


def delete_blobs(blobs: BlobStore, keys: Sequence[str], unlink: Executor | None = None) -> None:
    """Deletes every blob of `keys` (missing ones are skipped), in `unlink`'s threads when given.

    Returns once all are gone; raises the first error any deletion raised.
    """
    if unlink is None or len(keys) <= _UNLINKS_PER_TASK:
        blobs.delete_many(keys)
        return

    def delete_slice(start: int) -> None:
        # An object store deletes a slice in one request; a directory unlinks each file.
        blobs.delete_many(keys[start : start + _UNLINKS_PER_TASK])

    # Slices rather than a task per key: a future costs about as much as an unlink.
    tasks = [unlink.submit(delete_slice, start) for start in range(0, len(keys), _UNLINKS_PER_TASK)]
    # Every task is waited for before an error is raised: none may still run once the
    # caller's transaction ends.
    errors = [error for task in tasks if (error := task.exception()) is not None]
    if errors:
        raise errors[0]


def _audit_batch(
    conn: Connection, reason: SweepReason, deleted: int, *, now: datetime, actor: Actor = SYSTEM, **details: int
) -> None:
    """Writes a batch's audit row, which also adds `deleted` to `reason`'s row of `sweep_totals`
    (the trigger of migration 0013 matches this action and target type).

    Call it last in the batch's transaction: from here to the commit the batch holds its reason's
    totals row, which sweepers side by side wait for in turn.
    """
    record_audit(
        conn,
        actor,
        now,
        "retention.sweep",
        "sweep_batch",
        uuid4(),
        {"reason": reason.value, "deleted": deleted, **details},
    )


def expire_reservations_batch(conn: Connection, *, now: datetime, limit: int) -> int:
    """Expires up to `limit` held reservations past their expiry (credits given back), counted by one
    audit row in the same transaction, as a content batch is."""
    with conn.transaction():
        expired = credits.expire_reservations(conn, now, limit=limit)
        if expired > 0:
            _audit_batch(conn, SweepReason.RESERVATION_EXPIRED, expired, now=now)
    return expired


def drop_old_usage(conn: Connection, policies: TenantPolicies, *, now: datetime, limit: int) -> int:
    """Deletes up to `limit` aggregated usage rows older than their tenant's usage retention."""
    with conn.transaction():
        deleted = conn.execute(
            f"""
            WITH {POLICY_CTE}
            DELETE FROM usage_daily WHERE (day, tenant_id, model) IN (
                SELECT u.day, u.tenant_id, u.model FROM usage_daily u JOIN policy p USING (tenant_id)
                WHERE u.day < (%(now)s - p.usage_retention)::date
                LIMIT %(limit)s FOR UPDATE OF u SKIP LOCKED
            )
            """,
            {**policies.params(), "now": now, "limit": limit},
        ).rowcount
        if deleted > 0:
            _audit_batch(conn, SweepReason.USAGE_RETENTION, deleted, now=now)
    return max(deleted, 0)


def aggregate_usage(conn: Connection, *, now: datetime) -> int:
    """Folds the finished days' charges into `usage_daily` (per day, tenant and model).

    Days already aggregated are left alone, so running it again (or from two sweepers) adds
    nothing: the newest aggregated day is the watermark, under a transaction-level advisory
    lock. The raw rows stay where they are (the ledger is the tax record); only aggregates
    outlive the content.

    Returns:
        How many days were aggregated.
    """
    today = now.date()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('atelier.usage_daily'))")
        row = conn.execute("SELECT max(day) FROM usage_daily").fetchone()
        watermark = row[0] if row is not None else None
        start = conn.execute(
            """
            SELECT min(created_at)::date FROM credit_ledger
            WHERE kind = 'charge' AND (%(mark)s::date IS NULL OR created_at >= %(mark)s::date + 1)
            """,
            {"mark": watermark},
        ).fetchone()
        first = start[0] if start is not None else None
        if first is None or first >= today:
            return 0
        days = conn.execute(
            """
            INSERT INTO usage_daily (day, tenant_id, model, generations, images, credits_charged)
            SELECT l.created_at::date, a.tenant_id, coalesce(m.model, ''), count(*), sum(coalesce(m.images, 0)),
                   sum(-l.delta)
            FROM credit_ledger l
            JOIN accounts a USING (account_id)
            LEFT JOIN LATERAL (
                SELECT min(c.model) AS model, count(*) AS images
                FROM content c WHERE c.reservation_id = l.reservation_id
            ) m ON true
            WHERE l.kind = 'charge' AND l.created_at >= %(first)s AND l.created_at < %(today)s
            GROUP BY 1, 2, 3
            ON CONFLICT (day, tenant_id, model) DO NOTHING
            RETURNING day
            """,
            {"first": first, "today": today},
        ).fetchall()
    return len({d[0] for d in days})


def run_sweep(
    pool: Pool,
    blobs: BlobStore,
    registry: PolicyRegistry,
    *,
    now: datetime,
    batch_size: int = DEFAULT_BATCH_SIZE,
    metrics: SweepMetrics | None = None,
    on_batch: BatchCallback | None = None,
    stop: threading.Event | None = None,
    workers: int = DEFAULT_WORKERS,
    unlink_threads: int = DEFAULT_UNLINK_THREADS,
) -> SweepReport:
    """One full pass of every rule, batch after batch, until nothing is due (or `stop` is set).

    Safe to run in several processes at once and to kill at any point (see the module doc).

    Args:
        pool: Database pool; up to `workers` connections are used at a time.
        blobs: The blob store content lives in.
        registry: The policy profiles tenants follow.
        now: The pass's "now" (the clock, or `--as-of`).
        batch_size: Items per transaction, 1..100000.
        metrics: Where deletions are counted; None counts nowhere.
        on_batch: Called after each committed batch (from the worker that committed it).
        stop: Ends the pass between batches when set.
        workers: Batch loops per content rule, side by side, 1..16 (capped by the pool's size).
        unlink_threads: Threads unlinking blobs, 0..64; 0 unlinks in the batch's own thread.

    Raises:
        InvalidArgument: `batch_size`, `workers` or `unlink_threads` out of range.
    """
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise InvalidArgument("batch_size", f"must be 1..{MAX_BATCH_SIZE}")
    if not 1 <= workers <= 16:
        raise InvalidArgument("workers", "must be 1..16")
    if not 0 <= unlink_threads <= 64:
        raise InvalidArgument("unlink_threads", "must be 0..64")
    started = time.monotonic()
    report = SweepReport(as_of=now)
    report_lock = threading.Lock()

    def done(reason: SweepReason, count: int) -> None:
        with report_lock:
            report.deleted[reason] += count
            report.batches += 1
        if metrics is not None:
            metrics.deleted_items.labels(reason.value).inc(count)
        if on_batch is not None:
            on_batch(reason, count)

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    with pool.connection() as conn:
        report.usage_days_aggregated = aggregate_usage(conn, now=now)
        policies = TenantPolicies.load(conn, registry)
    with contextlib.ExitStack() as resources:
        unlink = (
            resources.enter_context(ThreadPoolExecutor(unlink_threads, thread_name_prefix="sweep-unlink"))
            if unlink_threads
            else None
        )
        for reason in _CONTENT_QUEUES:
            _sweep_queue(
                pool,
                blobs,
                reason,
                policies,
                now=now,
                batch_size=batch_size,
                workers=min(workers, pool.max_size or 1),
                unlink=unlink,
                done=done,
                stopped=stopped,
            )
    with pool.connection() as conn:
        while not stopped():
            count = expire_reservations_batch(conn, now=now, limit=batch_size)
            if count:
                done(SweepReason.RESERVATION_EXPIRED, count)
            if count < batch_size:
                break
        while not stopped():
            count = drop_old_usage(conn, policies, now=now, limit=batch_size)
            if count:
                done(SweepReason.USAGE_RETENTION, count)
            if count < batch_size:
                break
        if not stopped():
            report.removals = removals.reconcile_removals(conn, registry, now=now)
    report.seconds = time.monotonic() - started
    _logger.info(
        "sweep done as_of=%s total=%d batches=%d seconds=%.3f %s",
        now.isoformat(),
        report.total,
        report.batches,
        report.seconds,
        " ".join(f"{reason.value}={count}" for reason, count in report.deleted.items()),
    )
    return report


def _sweep_queue(
    pool: Pool,
    blobs: BlobStore,
    reason: SweepReason,
    policies: TenantPolicies,
    *,
    now: datetime,
    batch_size: int,
    workers: int,
    unlink: Executor | None,
    done: BatchCallback,
    stopped: Callable[[], bool],
) -> None:
    """Works through one content rule's queue with `workers` batch loops, until none finds a full batch.

    The loops are what several sweepers would be: each skips the rows the others have locked
    (SKIP LOCKED) and walks on from its own last key, so together they take every due row
    once. A loop that ends early leaves the rows others hold to them.
    """

    def loop() -> None:
        after: datetime | None = None
        with pool.connection() as conn:
            while not stopped():
                count, last_key = sweep_content_batch(
                    conn, blobs, reason, policies, now=now, limit=batch_size, after=after, unlink=unlink
                )
                if count:
                    done(reason, count)
                if count < batch_size:
                    return
                after = last_key

    if workers == 1:
        loop()
        return
    with ThreadPoolExecutor(workers, thread_name_prefix=f"sweep-{reason.value}") as loops:
        tasks = [loops.submit(loop) for _ in range(workers)]
    errors = [error for task in tasks if (error := task.exception()) is not None]
    if errors:
        raise errors[0]


def sweep_lag_seconds(conn: Connection, registry: PolicyRegistry, now: datetime) -> float:
    """Age of the oldest item still present past its deadline, in seconds; 0 when none is.

    Reads the head of each content rule's queue (no locks), so it is cheap while the sweeper
    keeps up and grows while it does not.
    """
    policies = TenantPolicies.load(conn, registry)
    oldest: datetime | None = None
    for field_name, _, queue in _CONTENT_QUEUES.values():
        shortest = policies.shortest(field_name)
        if shortest is None:
            continue
        row = conn.execute(
            f"""
            WITH {POLICY_CTE}
            SELECT min({DEADLINE_SQL}) FROM content c
            JOIN accounts a ON a.account_id = c.account_id JOIN policy p ON p.tenant_id = a.tenant_id
            WHERE c.content_id = ANY(ARRAY({queue.format(deadline=DEADLINE_SQL)} LIMIT 1))
            """,
            {**policies.params(), "now": now, "bound": now - shortest, "after": datetime.min.replace(tzinfo=UTC)},
        ).fetchone()
        deadline = row[0] if row is not None else None
        if deadline is not None and (oldest is None or deadline < oldest):
            oldest = deadline
    row = conn.execute(
        "SELECT min(expires_at) FROM reservations WHERE state = 'held' AND expires_at < %s", (now,)
    ).fetchone()
    if row is not None and row[0] is not None and (oldest is None or row[0] < oldest):
        oldest = row[0]
    return max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0


class SweepLagCollector(Collector):
    """`atelier_sweep_lag_seconds`, read from the database at scrape time.

    A gauge of state, not of this process: every replica reports the same value, whether the
    sweeps run in the server's loop or in a CronJob.
    """

    def __init__(self, pool: Pool, registry: PolicyRegistry, clock: Clock) -> None:
        self._pool = pool
        self._registry = registry
        self._clock = clock

    def collect(self) -> Any:
        lag = read_for_scrape(self._pool, lambda conn: sweep_lag_seconds(conn, self._registry, self._clock.now()))
        if lag is None:
            return
        gauge = GaugeMetricFamily(
            "atelier_sweep_lag_seconds",
            "Age of the oldest item (or held reservation) still present past its retention deadline; 0 when "
            "the sweeper is keeping up.",
        )
        gauge.add_metric([], lag)
        yield gauge


class SweepLoop:
    """Runs a sweep pass every `interval` in a daemon thread (the server's built-in sweeper)."""

    def __init__(
        self,
        pool: Pool,
        blobs: BlobStore,
        registry: PolicyRegistry,
        clock: Clock,
        *,
        interval: timedelta,
        metrics: SweepMetrics | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self._pool, self._blobs, self._registry, self._clock = pool, blobs, registry, clock
        self._interval = interval
        self._metrics = metrics
        self._batch_size = batch_size
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retention-sweeper", daemon=True)

    def start(self) -> SweepLoop:
        """Starts the thread; the first pass runs at once."""
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ends the loop after the current batch and waits up to `timeout_s` for it."""
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                run_sweep(
                    self._pool,
                    self._blobs,
                    self._registry,
                    now=self._clock.now(),
                    batch_size=self._batch_size,
                    metrics=self._metrics,
                    stop=self._stop,
                )
            except Exception:
                # The next pass retries: batches are idempotent.
                _logger.exception("sweep pass failed; retrying next interval")
            self._stop.wait(self._interval.total_seconds())
