"""Training exports: every eligible item to Parquet, with a manifest, each item recorded.

One export is one REPEATABLE READ snapshot, so the files, `export_items` and the counts
describe the same set of items:

1. the export row and its random salt are inserted, and the transaction's snapshot is
   exported (`pg_export_snapshot`);
2. two things then run at once, one per connection, both judging eligibility
   (`eligibility`) in that one snapshot: this transaction records every eligible item in
   `export_items` with `INSERT ... SELECT` (so no id travels back; the item's pseudonymous
   id, `sha256(salt || content id)`, is not stored but computed where it is read,
   `PSEUDONYM_SQL`), while a second, read-only transaction that imported the snapshot
   streams the same rows with `COPY (SELECT ...) TO STDOUT` as CSV, which pyarrow parses
   32 MiB at a time; prompts are decrypted with their account's data key (the keys read
   in one query and each unwrapped once, one AES-GCM open per row) and scrubbed of personal
   identifiers (`identifiers`: `<EMAIL>`, `<PHONE>`, ... placeholders), images
   (optionally) read and decrypted through the blob store, and the tables written to Parquet
   files of at most `rows_per_file` rows (zstd);
3. the number of rows written must equal the number recorded; the manifest (export id,
   time, policy snapshot, counts, file checksums) is written, and the export row completed.

With a pool of one connection the two halves of step 2 run one after the other on it.

Crash safety: files are staged under a hidden name, `.partial-<id>` (pyarrow and Spark skip
names starting with `.`), before the transaction commits, and published as `<id>` only after
it has (`adapters/export_targets.py`: a directory is renamed; in an S3 bucket the staged
objects are copied to the final prefix, manifest last). So an export named by its id is
always complete and known to the database (its removal manifest can be built), and a process
killed at any point leaves at most a hidden staging area. The next export to the same target
finishes what a crash left (`finish_interrupted_exports`): a staged export that committed is
published, one that never committed is deleted. An export holds a transaction-level advisory
lock on its id while it runs, so that clean-up never touches a running export's files.

Items that become ineligible while (or after) the export runs are listed by its removal
manifest the next time it is read (`removals.reconcile_removals`).

Files carry no account or content ids: `item_id` and `subject_id` are salted per export and
the salt never leaves the control plane, which keeps the mapping only to build removal
manifests (DESIGN.md §9). If anything fails, the transaction rolls back and what was
written and staged is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID, uuid4
from weakref import WeakKeyDictionary

import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from prometheus_client import CollectorRegistry, Counter
from psycopg import sql
from psycopg.types.json import Jsonb

from control_plane import crypto
from control_plane.adapters.encrypted_blobs import EncryptedBlobStore
from control_plane.adapters.export_targets import MANIFEST_NAME, ExportTarget, LocalExportTarget
from control_plane.adapters.export_targets import STAGING_PREFIX as STAGING_PREFIX  # re-exported for callers
from control_plane.adapters.keystore import DataKey, KeyStore
from control_plane.audit import Actor, record_audit
from control_plane.db.pool import Connection, Pool
from control_plane.eligibility import ELIGIBILITY_CTES, ELIGIBILITY_FROM, INELIGIBILITY_SQL, eligibility_params
from control_plane.errors import InvalidArgument
from control_plane.identifiers import PromptScrubber, default_scrubber
from control_plane.policy import PolicyRegistry
from control_plane.retention import RetentionPolicy

_logger = logging.getLogger(__name__)

DEFAULT_ROWS_PER_FILE = 250_000
_ROW_GROUP_ROWS = 128 * 1024
"""Rows per Parquet row group: a few MiB of metadata rows, so readers can skip and parallelise."""
SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("subject_id", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("parameters", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("media_type", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=True),
    ]
)
"""Columns of the Parquet files: pseudonymous ids (salted per export), the image's SHA-256 (for
CheckTrainingEligibility), model, generation parameters as JSON, the prompt, and the image
bytes (null when the export was made without images)."""

# Columns COPY streams, in order; the first five are only for decryption and never written.
_COPY_COLUMNS = [
    "content_id_hex",
    "blob_key",
    "encryption_key_id",
    "prompt_sealed",
    "plain_prompt",
    "item_id",
    "subject_id",
    "sha256",
    "model",
    "parameters",
    "media_type",
]


class ExportMetrics:
    """`atelier_export_rows_total`, registered once per registry."""

    _by_registry: ClassVar[WeakKeyDictionary[CollectorRegistry, ExportMetrics]] = WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows = Counter("atelier_export_rows", "Rows written to training exports.", registry=registry)

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> ExportMetrics:
        """The metrics registered in `registry` (registering them on first use)."""
        with cls._lock:
            metrics = cls._by_registry.get(registry)
            if metrics is None:
                metrics = cls._by_registry[registry] = cls(registry)
            return metrics


@dataclass(frozen=True)
class ExportFile:
    """One Parquet file of an export."""

    name: str
    rows: int
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class TrainingExport:
    """A completed export."""

    export_id: UUID
    location: str
    """Where it was published: a directory, or an `s3://bucket/prefix/<export id>` URL."""
    item_count: int
    files: list[ExportFile]
    manifest: dict[str, Any]
    seconds: float = field(default=0.0, compare=False)

    @property
    def directory(self) -> Path:
        """The export's directory (a local export only).

        Raises:
            ValueError: The export went to an object store.
        """
        if "://" in self.location:
            raise ValueError(f"export {self.export_id} is in an object store: {self.location}")
        return Path(self.location)


def create_training_export(
    pool: Pool,
    blobs: EncryptedBlobStore,
    keys: KeyStore,
    registry: PolicyRegistry,
    *,
    output_dir: Path | ExportTarget,
    actor: Actor,
    now: datetime,
    include_images: bool = True,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    metrics: ExportMetrics | None = None,
    scrubber: PromptScrubber | None = None,
) -> TrainingExport:
    """Exports every item eligible at `now` to `<export id>` under `output_dir`.

    Args:
        pool: Database pool (two connections when it has them: see the module docstring).
        blobs: The encrypted blob store images are read through.
        keys: Data keys, to decrypt prompts and images.
        registry: The policy profiles tenants follow (eligibility is per tenant's profile).
        output_dir: Parent directory (created if missing), or a target such as an S3 prefix
            (`adapters.export_targets.open_export_target`).
        actor: Who asked (the audit row's actor).
        now: The export's "now": eligibility is judged at this instant.
        include_images: Write the image bytes; off, the `image` column is null (metadata only).
        rows_per_file: Most rows per Parquet file, >= 1.
        metrics: Where written rows are counted.
        scrubber: Replaces personal identifiers in prompts before they are written;
            None is `identifiers.default_scrubber()`. The manifest records which.

    Raises:
        InvalidArgument: `rows_per_file` < 1.
    """
    if rows_per_file < 1:
        raise InvalidArgument("rows_per_file", "must be >= 1")
    scrubber = scrubber if scrubber is not None else default_scrubber()
    started = time.monotonic()
    export_id = uuid4()
    salt = secrets.token_bytes(32)
    target = _as_target(output_dir)
    finish_interrupted_exports(pool, target)
    location = target.location(export_id)
    directory: Path | None = None
    try:
        with pool.connection() as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            try:
                with conn.transaction():
                    # Held to the commit: `finish_interrupted_exports` leaves this staging alone.
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(export_id),))
                    directory = target.begin(export_id)
                    # Sorting a million eligible rows by key spills to disk under the default.
                    conn.execute("SET LOCAL work_mem = '256MB'")
                    params = eligibility_params(conn, registry, now)
                    profiles = _profile_snapshot(registry)
                    conn.execute(
                        """
                        INSERT INTO training_exports (export_id, state, consent_mode, salt, location,
                                                      requested_by_key_id, created_at, started_at)
                        VALUES (%s, 'running', %s, %s, %s, %s, %s, %s)
                        """,
                        (
                            export_id,
                            registry.default.training_consent_mode.value,
                            salt,
                            location,
                            actor.key_id,
                            now,
                            now,
                        ),
                    )
                    item_count, files = _record_and_write(
                        pool,
                        conn,
                        blobs,
                        keys,
                        params,
                        export_id=export_id,
                        salt=salt,
                        directory=directory,
                        include_images=include_images,
                        rows_per_file=rows_per_file,
                        metrics=metrics,
                        scrubber=scrubber,
                    )
                    written = sum(f.rows for f in files)
                    if written != item_count:
                        raise RuntimeError(f"export wrote {written} rows but recorded {item_count} items")
                    # Fresh statistics: with a million unanalysed rows the planner would reconcile this
                    # export's removals by a million index probes (6.7 s) instead of one hash join (2.5 s).
                    conn.execute("ANALYZE export_items")
                    manifest = {
                        "export_id": str(export_id),
                        "created_at": now.isoformat(),
                        "format": "parquet",
                        "schema": [{"name": f.name, "type": str(f.type)} for f in SCHEMA],
                        "includes_images": include_images,
                        "policy": profiles,
                        "prompt_scrubber": scrubber.describe(),
                        "counts": {"items": item_count, "files": len(files)},
                        "files": [
                            {"name": f.name, "rows": f.rows, "size_bytes": f.size_bytes, "sha256": f.sha256}
                            for f in files
                        ],
                    }
                    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
                    target.stage(export_id, directory, [*(f.name for f in files), MANIFEST_NAME])
                    conn.execute(
                        """
                        UPDATE training_exports SET state = 'completed', item_count = %s, completed_at = %s,
                                                    manifest = %s
                        WHERE export_id = %s
                        """,
                        (item_count, now, Jsonb(manifest), export_id),
                    )
                    record_audit(
                        conn,
                        actor,
                        now,
                        "training.export",
                        "training_export",
                        export_id,
                        {"items": item_count, "files": len(files), "includes_images": include_images},
                    )
            finally:
                conn.isolation_level = None
    except BaseException:
        if directory is not None:
            target.discard(export_id, directory)
        raise
    target.publish(export_id, directory)
    return TrainingExport(export_id, location, item_count, files, manifest, time.monotonic() - started)


def finish_interrupted_exports(pool: Pool, output_dir: Path | ExportTarget) -> list[UUID]:
    """Finishes what exports killed while writing to `output_dir` left behind; safe while others run.

    A staged export (`.partial-<export id>`) whose export committed is published under its
    final name; one whose export never committed (the process died mid-export, so the
    database rolled it back) is deleted. Staged exports still running (their advisory lock is
    held) are left alone.

    Returns:
        The ids of the committed exports this call put in place.
    """
    target = _as_target(output_dir)
    published: list[UUID] = []
    for export_id in target.staged_exports():
        with pool.connection() as conn, conn.transaction():
            locked = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (_lock_key(export_id),)).fetchone()
            if locked is None or not locked[0]:
                continue  # still running
            row = conn.execute("SELECT state FROM training_exports WHERE export_id = %s", (export_id,)).fetchone()
            if row is not None and row[0] == "completed":
                target.publish_staged(export_id)
                published.append(export_id)
                _logger.info("interrupted export published export_id=%s", export_id)
            elif row is None:
                target.discard_staged(export_id)
                _logger.info("interrupted export discarded export_id=%s", export_id)
    return published


def _as_target(output_dir: Path | ExportTarget) -> ExportTarget:
    return LocalExportTarget(output_dir) if isinstance(output_dir, Path) else output_dir


def _lock_key(export_id: UUID) -> int:
    # A signed 64-bit advisory lock key from the (random) export id.
    return int.from_bytes(export_id.bytes[:8], "big", signed=True)


def _profile_snapshot(registry: PolicyRegistry) -> dict[str, Any]:
    profiles = {"default": registry.default, **registry.named}
    return {
        name: {
            "profile": profile.name,
            "policy_version": profile.policy_version,
            "training_consent_mode": profile.training_consent_mode.value,
            "private_content_in_training": profile.private_content_in_training,
            "minors_excluded": True,
            "retention": RetentionPolicy.from_profile(profile).snapshot(),
        }
        for name, profile in profiles.items()
    }


# crypto.prompt_context is a constant prefix and the id's 16 bytes; the prefix is taken from
# it once, so rows need no UUID object.
_PROMPT_CONTEXT_PREFIX = crypto.prompt_context(UUID(int=0))[:-16]

PSEUDONYM_SQL = "encode(sha256({salt} || uuid_send({id})), 'hex')"
"""An id's pseudonym in an export, salted per export: `item_id` from a content id and `subject_id`
from an account id. Not stored: removal manifests compute it from the export's salt."""

_RECORD_SQL = f"""
    WITH {ELIGIBILITY_CTES}
    INSERT INTO export_items (export_id, content_id, account_id)
    SELECT %(export_id)s, c.content_id, c.account_id
    FROM {ELIGIBILITY_FROM}
    WHERE {INELIGIBILITY_SQL} IS NULL
    -- In key order, the primary key and content index grow at their right edge.
    ORDER BY c.content_id
"""


def _record_and_write(
    pool: Pool,
    conn: Connection,
    blobs: EncryptedBlobStore,
    keys: KeyStore,
    params: dict[str, Any],
    *,
    export_id: UUID,
    salt: bytes,
    directory: Path,
    include_images: bool,
    rows_per_file: int,
    metrics: ExportMetrics | None,
    scrubber: PromptScrubber,
) -> tuple[int, list[ExportFile]]:
    """Records the eligible items in `export_items` and writes them to Parquet; returns both counts' sources.

    `conn` is in the export's REPEATABLE READ transaction. Recording is the database's work
    and writing mostly this process's, so when the pool has a second connection they overlap:
    this transaction inserts (in a helper thread, which only waits on the server) while a
    read-only transaction that imported its snapshot streams the rows, so both see exactly
    the same items.
    """
    # Every live key that encrypts some content: a superset of what the export needs (it
    # cannot know which items are eligible before judging them), unwrapped once each.
    data_keys = keys.content_data_keys(conn)
    record_params = {**params, "export_id": export_id}
    if (pool.max_size or 1) < 2:
        item_count = max(conn.execute(_RECORD_SQL, record_params).rowcount, 0)
        files = _write_files(
            conn,
            blobs,
            data_keys,
            params,
            salt=salt,
            directory=directory,
            include_images=include_images,
            rows_per_file=rows_per_file,
            metrics=metrics,
            scrubber=scrubber,
        )
        return item_count, files
    row = conn.execute("SELECT pg_export_snapshot()").fetchone()
    if row is None:
        raise RuntimeError("pg_export_snapshot returned no row")
    snapshot = row[0]
    recorded: list[int] = []
    failure: list[BaseException] = []

    def record() -> None:
        try:
            recorded.append(max(conn.execute(_RECORD_SQL, record_params).rowcount, 0))
        except BaseException as error:  # re-raised in the caller's thread
            failure.append(error)

    recorder = threading.Thread(target=record, name=f"export-record-{export_id}", daemon=True)
    with pool.connection() as reader:
        reader.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        reader.read_only = True
        try:
            with reader.transaction():
                reader.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
                reader.execute("SET LOCAL work_mem = '256MB'")
                recorder.start()
                try:
                    files = _write_files(
                        reader,
                        blobs,
                        data_keys,
                        params,
                        salt=salt,
                        directory=directory,
                        include_images=include_images,
                        rows_per_file=rows_per_file,
                        metrics=metrics,
                        scrubber=scrubber,
                    )
                except BaseException:
                    # Stop the insert rather than wait for it; the caller's transaction rolls back.
                    conn.cancel_safe()
                    raise
                finally:
                    recorder.join()
        finally:
            reader.isolation_level = None
            reader.read_only = None
    if failure:
        raise failure[0]
    return recorded[0], files


class _Stopped(Exception):
    """The consumer of `_copy_tables` went away; the COPY is cancelled."""


def _copy_tables(
    conn: Connection, query: bytes | str, options: tuple[Any, Any, Any], block_bytes: int = 32 << 20
) -> Generator[pa.Table, None, None]:
    """Tables of the CSV rows `COPY ... TO STDOUT` sends, parsed `block_bytes` at a time.

    PostgreSQL sends one row per message, so a block of whole messages is whole lines; each
    block is parsed by pyarrow's (multithreaded) reader in one call. A helper thread reads
    and parses up to two blocks ahead, so the server keeps producing rows while the caller
    decrypts and writes the previous ones. Close the generator (`contextlib.closing`) so an
    abandoned COPY is cancelled before `conn` is used again.
    """
    read, parse, convert = options
    ready: queue.Queue[pa.Table | BaseException | None] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def hand_over(item: pa.Table | BaseException | None) -> None:
        while True:
            if stop.is_set():
                raise _Stopped
            try:
                ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            with conn.cursor() as cur, cur.copy(query) as copy:
                block = bytearray()
                for chunk in copy:
                    block += chunk
                    if len(block) >= block_bytes:
                        hand_over(pa_csv.read_csv(pa.BufferReader(bytes(block)), read, parse, convert))
                        block = bytearray()
                if block:
                    hand_over(pa_csv.read_csv(pa.BufferReader(bytes(block)), read, parse, convert))
            hand_over(None)
        except _Stopped:
            return
        except BaseException as error:  # re-raised in the consumer's thread
            with contextlib.suppress(_Stopped):
                hand_over(error)

    producer = threading.Thread(target=produce, name="export-copy-reader", daemon=True)
    producer.start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        producer.join()


def _write_files(
    conn: Connection,
    blobs: EncryptedBlobStore,
    data_keys: dict[UUID, DataKey],
    params: dict[str, Any],
    *,
    salt: bytes,
    directory: Path,
    include_images: bool,
    rows_per_file: int,
    metrics: ExportMetrics | None,
    scrubber: PromptScrubber,
) -> list[ExportFile]:
    # COPY takes no parameters: the eligibility query's are bound client-side into literals.
    query = f"""
        COPY (
            WITH {ELIGIBILITY_CTES}
            SELECT encode(uuid_send(c.content_id), 'hex'), c.blob_key, c.encryption_key_id,
                   encode(c.prompt_sealed, 'hex'), encode(convert_to(c.prompt, 'UTF8'), 'hex'),
                   {PSEUDONYM_SQL.format(salt=_literal(salt), id="c.content_id")},
                   {PSEUDONYM_SQL.format(salt=_literal(salt), id="c.account_id")},
                   c.sha256, c.model, c.parameters::text, c.media_type
            FROM {ELIGIBILITY_FROM}
            WHERE {INELIGIBILITY_SQL} IS NULL
        ) TO STDOUT (FORMAT csv)
    """
    bound = psycopg.ClientCursor(conn).mogrify(query, params)
    convert = pa_csv.ConvertOptions(
        column_types={name: pa.string() for name in _COPY_COLUMNS}, strings_can_be_null=False
    )
    read = pa_csv.ReadOptions(column_names=_COPY_COLUMNS)
    # Prompts travel as hex, so no value holds a line break and blocks split at rows.
    parse = pa_csv.ParseOptions()
    files: list[ExportFile] = []
    writer: pq.ParquetWriter | None = None
    rows_in_file = 0
    openers = {str(key_id): crypto.SealedOpener(key.key) for key_id, key in data_keys.items()}

    def close_file() -> None:
        nonlocal writer
        if writer is not None:
            writer.close()
            path = directory / files[-1].name
            files[-1] = ExportFile(files[-1].name, rows_in_file, path.stat().st_size, _file_sha256(path))
            writer = None

    with contextlib.closing(_copy_tables(conn, bound, (read, parse, convert))) as tables:
        for batch in tables:
            table = _output_table(batch, blobs, openers, include_images=include_images, scrubber=scrubber)
            offset = 0
            while offset < table.num_rows:
                if writer is None or rows_in_file >= rows_per_file:
                    close_file()
                    name = f"part-{len(files):05d}.parquet"
                    files.append(ExportFile(name, 0, 0, ""))
                    writer = pq.ParquetWriter(directory / name, SCHEMA, compression="zstd")
                    rows_in_file = 0
                take = min(rows_per_file - rows_in_file, table.num_rows - offset)
                writer.write_table(table.slice(offset, take), row_group_size=_ROW_GROUP_ROWS)
                rows_in_file += take
                offset += take
                if metrics is not None:
                    metrics.rows.inc(take)
        close_file()
    return files


def _output_table(
    batch: pa.Table,
    blobs: EncryptedBlobStore,
    openers: dict[str, crypto.SealedOpener],
    *,
    include_images: bool,
    scrubber: PromptScrubber,
) -> pa.Table:
    # Per-row Python work is the export's cost, so a row costs two hex decodes and one AES-GCM
    # open: keys are looked up by their text form, each key's cipher is built once
    # (`openers`), the associated data is made from the id's bytes without a UUID object, the
    # opens run in one pass (`crypto.open_each`), and pyarrow checks the prompts' UTF-8 for the
    # whole batch.
    fromhex = bytes.fromhex
    prefix = _PROMPT_CONTEXT_PREFIX
    content_ids = [fromhex(h) for h in batch.column("content_id_hex").to_pylist()]
    key_ids = batch.column("encryption_key_id").to_pylist()
    sealed = [fromhex(h) for h in batch.column("prompt_sealed").to_pylist()]
    if all(sealed):
        prompts = crypto.open_each(openers, key_ids, sealed, [prefix + content_id for content_id in content_ids])
    else:
        # Legacy rows keep the prompt in clear (the hex of its UTF-8) and have an empty sealed column.
        prompts = [
            openers[key_id].open(message, prefix + content_id) if message else fromhex(clear)
            for content_id, key_id, message, clear in zip(
                content_ids, key_ids, sealed, batch.column("plain_prompt").to_pylist(), strict=True
            )
        ]
    images: pa.Array
    if include_images:
        data: list[bytes] = []
        for content_id, key_id, blob_key in zip(
            content_ids, key_ids, batch.column("blob_key").to_pylist(), strict=True
        ):
            ciphertext = blobs.inner.get(blob_key)
            context = crypto.blob_context(UUID(bytes=content_id))
            data.append(openers[key_id].open(ciphertext, context) if key_id else ciphertext)
        images = pa.array(data, type=pa.binary())
    else:
        images = pa.nulls(batch.num_rows, type=pa.binary())
    return pa.Table.from_arrays(
        [
            batch.column("item_id"),
            batch.column("subject_id"),
            batch.column("sha256"),
            batch.column("model"),
            batch.column("parameters"),
            scrubber.scrub_array(pa.array(prompts, type=pa.binary()).cast(pa.string())),
            batch.column("media_type"),
            images,
        ],
        schema=SCHEMA,
    )


def _literal(salt: bytes) -> str:
    # COPY takes no parameters: the salt goes in as a bytea hex literal (hex digits only).
    return f"'\\x{salt.hex()}'::bytea"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
