"""Helpers the retention and training-data tests share: sweeps, stores, stubs."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from uuid import UUID

import grpc
from prometheus_client import CollectorRegistry

from control_plane.adapters.blobstore import BlobStore, LocalBlobStore
from control_plane.adapters.encrypted_blobs import EncryptedBlobStore
from control_plane.adapters.keystore import KeyStore
from control_plane.audit import SYSTEM
from control_plane.db.pool import Pool
from control_plane.policy import PolicyRegistry
from control_plane.sweeper import SweepMetrics, SweepReport, run_sweep
from control_plane.training_exports import TrainingExport, create_training_export
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from protos.atelier.v1.training_pb2_grpc import TrainingDataStub
from tests.integration.control_plane._privacy import generate, new_item
from tests.integration.control_plane._support import Caller


def sweep(
    pool: Pool, blobs: LocalBlobStore, policies: PolicyRegistry, now: datetime, batch_size: int = 1000
) -> SweepReport:
    """One sweep pass at `now`, counting into a fresh registry."""
    return run_sweep(pool, blobs, policies, now=now, batch_size=batch_size, metrics=SweepMetrics(CollectorRegistry()))


def export_training(
    pool: Pool,
    blobs: BlobStore,
    keys: KeyStore,
    policies: PolicyRegistry,
    *,
    now: datetime,
    output_dir: Path,
    include_images: bool = True,
    rows_per_file: int | None = None,
) -> TrainingExport:
    """One training export at `now` into `output_dir`, as the system (the nightly job) makes it."""
    options = {} if rows_per_file is None else {"rows_per_file": rows_per_file}
    return create_training_export(
        pool,
        EncryptedBlobStore(blobs),
        keys,
        policies,
        output_dir=output_dir,
        actor=SYSTEM,
        now=now,
        include_images=include_images,
        **options,
    )


def grant_training_consent(stub: ControlPlaneStub, caller: Caller, account_id: str) -> None:
    """Records the account's consent to training, given through the API."""
    stub.RecordConsent(
        pb.RecordConsentRequest(
            account_id=account_id,
            purpose=pb.CONSENT_PURPOSE_TRAINING,
            granted=True,
            method=pb.CONSENT_METHOD_API,
            source="api",
        ),
        metadata=caller.metadata,
    )


def store(
    stub: ControlPlaneStub, caller: Caller, account_id: str, count: int = 1, *, seed: int = 0, **fields: object
) -> list[pb.Content]:
    """Stores `count` items (16 per call) as the gateway does; returns them in order."""
    stored: list[pb.Content] = []
    while len(stored) < count:
        batch = min(16, count - len(stored))
        items = [new_item(seed + len(stored) + i, **fields) for i in range(batch)]
        stored.extend(generate(stub, caller, account_id, *items).contents)
    return stored


def live_ids(pool: Pool) -> set[UUID]:
    """Ids of every content row."""
    with pool.connection() as conn:
        return {row[0] for row in conn.execute("SELECT content_id FROM content").fetchall()}


def audited_sweep_count(pool: Pool) -> int:
    """Sum of the items the sweep batches' audit rows counted."""
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT coalesce(sum((details ->> 'deleted')::bigint), 0) FROM audit_log WHERE action = 'retention.sweep'"
        ).fetchone()
    return int(row[0]) if row else 0


def audited_sweeps_by_reason(pool: Pool) -> dict[str, tuple[int, int]]:
    """(items, batches) by reason, summed from the sweep batches' audit rows."""
    with pool.connection() as conn:
        rows = conn.execute(
            """
            SELECT details ->> 'reason', sum((details ->> 'deleted')::bigint), count(*)
            FROM audit_log WHERE action = 'retention.sweep' AND target_type = 'sweep_batch' GROUP BY 1
            """
        ).fetchall()
    return {reason: (int(items), int(batches)) for reason, items, batches in rows}


def sweep_totals(pool: Pool) -> dict[str, tuple[int, int]]:
    """(items, batches) by reason, as the `sweep_totals` table (what /metrics reads) keeps them."""
    with pool.connection() as conn:
        rows = conn.execute("SELECT reason, items, batches FROM sweep_totals").fetchall()
    return {reason: (items, batches) for reason, items, batches in rows}


def training_stub(channel: grpc.Channel) -> TrainingDataStub:
    """A TrainingData client on the session's channel."""
    return TrainingDataStub(channel)


def iter_ids(contents: list[pb.Content]) -> Iterator[UUID]:
    """The UUIDs of stored items."""
    return (UUID(c.content_id) for c in contents)
