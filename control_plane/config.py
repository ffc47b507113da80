"""Configuration of the control plane: one frozen dataclass, validated at construction."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

VISIBILITIES = ("private", "public")

#: The environment variable that sets each field, for `from_env` and for help texts.
ENV_VARS: Mapping[str, str] = {
    "database_url": "ATELIER_DATABASE_URL",
    "listen_address": "ATELIER_CONTROL_PLANE_LISTEN",
    "metrics_port": "ATELIER_CONTROL_PLANE_METRICS_PORT",
    "home": "ATELIER_HOME",
    "blob_dir": "ATELIER_BLOB_DIR",
    "blob_url": "ATELIER_BLOB_URL",
    "reservation_ttl_s": "ATELIER_RESERVATION_TTL_S",
    "max_reservation_ttl_s": "ATELIER_MAX_RESERVATION_TTL_S",
    "pool_min_size": "ATELIER_DB_POOL_MIN_SIZE",
    "pool_max_size": "ATELIER_DB_POOL_MAX_SIZE",
    "database_probe_interval_ms": "ATELIER_DATABASE_PROBE_INTERVAL_MS",
    "grpc_workers": "ATELIER_CONTROL_PLANE_WORKERS",
    "caller_cache_ttl_ms": "ATELIER_CALLER_CACHE_TTL_MS",
    "max_message_bytes": "ATELIER_CONTROL_PLANE_MAX_MESSAGE_BYTES",
    "default_visibility": "ATELIER_DEFAULT_VISIBILITY",
    "minimum_age": "ATELIER_MINIMUM_AGE",
    "master_key_file": "ATELIER_MASTER_KEY_FILE",
    "master_key": "ATELIER_MASTER_KEY",
    "policy_profile": "ATELIER_POLICY_PROFILE",
    "policy_dir": "ATELIER_POLICY_DIR",
    "sweep_interval_s": "ATELIER_SWEEP_INTERVAL_S",
    "key_rate_per_s": "ATELIER_KEY_RATE_PER_S",
    "key_burst": "ATELIER_KEY_BURST",
    "account_rate_per_s": "ATELIER_ACCOUNT_RATE_PER_S",
    "account_burst": "ATELIER_ACCOUNT_BURST",
    "max_concurrent_generations": "ATELIER_MAX_CONCURRENT_GENERATIONS",
    "concurrency_retry_s": "ATELIER_CONCURRENCY_RETRY_S",
    "c2pa_cert_file": "ATELIER_C2PA_CERT",
    "c2pa_key_file": "ATELIER_C2PA_KEY",
    "c2pa_trust_anchors_file": "ATELIER_C2PA_TRUST_ANCHORS",
}


class ConfigError(ValueError):
    """A setting has a value the control plane cannot run with.

    Attributes:
        setting: The field (or environment variable) at fault.
        detail: What is wrong and which values are valid.
    """

    def __init__(self, setting: str, detail: str) -> None:
        super().__init__(f"{setting} {detail}")
        self.setting = setting
        self.detail = detail


@dataclass(frozen=True)
class ControlPlaneConfig:
    """Everything the control plane process needs to start.

    Build it with `ControlPlaneConfig.from_env()` in entry points and directly in tests.
    """

    database_url: str | None = None
    """PostgreSQL connection string (URL or key=value). None starts or reuses the embedded
    server whose data lives under `home/postgres`."""

    listen_address: str = "127.0.0.1:50051"
    """host:port the gRPC server binds; port 0 picks a free port."""

    metrics_port: int = 9101
    """Port of the Prometheus /metrics HTTP endpoint, 1..65535; 0 turns it off."""

    home: Path = field(default_factory=lambda: Path(".atelier"))
    """State directory: embedded PostgreSQL data, blobs (by default), keys."""

    blob_dir: Path | None = None
    """Directory of the local blob store; None means `home/blobs` (see `blob_root`)."""

    blob_url: str | None = None
    """Where content blobs live: `s3://bucket/prefix` (an S3-compatible object store; its
    credentials and endpoint come from the standard `AWS_*` variables) or `file:///abs/path`
    (a local directory, as `blob_dir`). None keeps the local directory (`blob_root`). With an
    s3:// URL, `blob_dir` is not used."""

    reservation_ttl_s: int = 600
    """Seconds a credit reservation is held when the request leaves the TTL at 0."""

    max_reservation_ttl_s: int = 3600
    """Longest TTL, in seconds, a caller may ask for."""

    pool_min_size: int = 2
    """Database connections kept open at all times, >= 0."""

    pool_max_size: int = 16
    """Most database connections open at once, >= max(1, pool_min_size)."""

    database_probe_interval_ms: int = 1000
    """Milliseconds between the server's background checks that the database answers
    (100..60000). Health reports NOT_SERVING, and RPCs fail at once with UNAVAILABLE
    `DATABASE_UNAVAILABLE`, from the first failed check until the next good one."""

    grpc_workers: int = 16
    """Threads serving RPCs, >= 1. Each RPC holds one database connection while it runs."""

    caller_cache_ttl_ms: int = 1000
    """Milliseconds an RPC's API key, and its tenant's identity provider and policy profile,
    are kept in memory after being read (0..60000; 0 reads them on every call). A key revoked
    or rotated through another replica (or a tenant setting changed with the CLI) takes effect
    on this one within this time; through this replica, at once."""

    max_message_bytes: int = 64 * 1024 * 1024
    """Largest request or response the gRPC server accepts, in bytes (>= 1 MiB); larger
    messages are refused by gRPC with RESOURCE_EXHAUSTED."""

    default_visibility: str = "private"
    """Visibility of new accounts' content when the request leaves it unspecified:
    "private" or "public"."""

    minimum_age: int = 13
    """Youngest age, in whole years, at which an account may be created, 0..150."""

    master_key_file: Path | None = None
    """File holding the master key (base64 of 32 bytes) that wraps every account's data key.
    None (and no `master_key`) uses `home/master.key`, created with mode 0600 when missing."""

    master_key: str | None = field(default=None, repr=False)
    """The master key itself (base64 of 32 bytes), e.g. from a Kubernetes Secret; wins over
    `master_key_file`, but cannot be rotated in place."""

    policy_profile: str | None = None
    """The cluster's policy profile: a name in `policy_dir` (e.g. "credits-moderated") or a
    path to a JSON file. None uses the product defaults (with `default_visibility` and
    `minimum_age` above)."""

    policy_dir: Path | None = None
    """Folder of named policy profiles (`*.json`); None means the checkout's `deploy/policies`."""

    sweep_interval_s: int = 300
    """Seconds between the retention sweeps the server runs in a background thread (0..86400);
    0 turns the built-in sweeper off (e.g. when a CronJob runs `atelier sweep --once`)."""

    # --- abuse limits (see control_plane/rate_limits.py) -------------------------------------

    key_rate_per_s: int = 100
    """RPCs per second one API key may make, per control-plane replica (token bucket refill);
    0 turns the per-key limit off. Settling calls (commit, release, store-and-commit) are free."""

    key_burst: int = 200
    """RPCs one API key may make at once after a quiet spell (bucket capacity), >= 1."""

    account_rate_per_s: int = 10
    """Credit reservations (so Generate requests) per second per account, per control-plane
    replica; 0 turns the per-account limit off."""

    account_burst: int = 40
    """Reservations one account may make at once after a quiet spell, >= 1."""

    max_concurrent_generations: int = 8
    """Held (unexpired) reservations, i.e. generations in flight, an account may have at once;
    checked in the database, so exact across replicas. 0 turns the bound off. 8 lets one
    account fill a batch of 8."""

    concurrency_retry_s: int = 1
    """Retry hint, in seconds, sent with TOO_MANY_CONCURRENT_REQUESTS, 1..3600."""

    c2pa_cert_file: Path | None = None
    """PEM certificate chain (signing certificate first) that signs every generated image's C2PA
    manifest (ES256). None, with `c2pa_key_file` None too: a self-signed development pair is
    created under `home/c2pa` (for development only)."""

    c2pa_key_file: Path | None = None
    """PEM (PKCS#8, unencrypted) EC P-256 private key of `c2pa_cert_file`'s first certificate."""

    c2pa_trust_anchors_file: Path | None = None
    """PEM root certificates a manifest must chain to for VerifyProvenance to call it trusted;
    None trusts the last certificate of `c2pa_cert_file` (or the development root)."""

    def __post_init__(self) -> None:
        if self.database_url is not None and not self.database_url.strip():
            _fail("database_url", "must not be blank (leave it unset for the embedded server)")
        _validate_listen_address(self.listen_address)
        _validate_blob_url(self.blob_url, self.blob_dir)
        _check_range("metrics_port", self.metrics_port, 0, 65535, "0 turns metrics off")
        _check_range("reservation_ttl_s", self.reservation_ttl_s, 1, self.max_reservation_ttl_s)
        _check_range("max_reservation_ttl_s", self.max_reservation_ttl_s, 1, 7 * 24 * 3600)
        _check_range("pool_min_size", self.pool_min_size, 0, 1000)
        _check_range("pool_max_size", self.pool_max_size, max(1, self.pool_min_size), 1000)
        _check_range("database_probe_interval_ms", self.database_probe_interval_ms, 100, 60_000)
        _check_range("grpc_workers", self.grpc_workers, 1, 1000)
        _check_range("caller_cache_ttl_ms", self.caller_cache_ttl_ms, 0, 60_000)
        _check_range("max_message_bytes", self.max_message_bytes, 1024 * 1024, 2**31 - 1)
        if self.default_visibility not in VISIBILITIES:
            _fail(
                "default_visibility",
                f"is {self.default_visibility!r}; valid values: {', '.join(VISIBILITIES)}",
            )
        _check_range("minimum_age", self.minimum_age, 0, 150)
        _check_range("sweep_interval_s", self.sweep_interval_s, 0, 86400, "0 turns the built-in sweeper off")
        _check_range("key_rate_per_s", self.key_rate_per_s, 0, 10**6, "0 turns the per-key limit off")
        _check_range("key_burst", self.key_burst, 1, 10**6)
        _check_range("account_rate_per_s", self.account_rate_per_s, 0, 10**6, "0 turns the per-account limit off")
        _check_range("account_burst", self.account_burst, 1, 10**6)
        _check_range("max_concurrent_generations", self.max_concurrent_generations, 0, 10**6, "0 turns the bound off")
        _check_range("concurrency_retry_s", self.concurrency_retry_s, 1, 3600)
        if (self.c2pa_cert_file is None) != (self.c2pa_key_file is None):
            _fail("c2pa_cert_file", "and c2pa_key_file (ATELIER_C2PA_CERT, ATELIER_C2PA_KEY) must be set together")

    @property
    def blob_root(self) -> Path:
        """The local blob store directory: a `file://` `blob_url`'s path, `blob_dir`, or
        `home/blobs` when neither is set (unused when `blob_url` is `s3://`)."""
        if self.blob_url is not None and self.blob_url.startswith("file:"):
            return Path(urlsplit(self.blob_url).path)
        return self.blob_dir if self.blob_dir is not None else self.home / "blobs"

    @property
    def blob_object_store_url(self) -> str | None:
        """The `s3://` URL content lives under; None when it lives in a local directory."""
        return self.blob_url if self.blob_url is not None and self.blob_url.startswith("s3:") else None

    @property
    def development_c2pa_dir(self) -> Path:
        """Where the development signing pair lives when no certificate is configured."""
        return self.home / "c2pa"

    @property
    def master_key_path(self) -> Path:
        """The master key file: `master_key_file`, or `home/master.key` when that is unset."""
        return self.master_key_file if self.master_key_file is not None else self.home / "master.key"

    @property
    def policy_root(self) -> Path:
        """Where named policy profiles live: `policy_dir`, or the checkout's `deploy/policies`."""
        if self.policy_dir is not None:
            return self.policy_dir
        return Path(__file__).resolve().parent.parent / "deploy" / "policies"

    @property
    def embedded_data_dir(self) -> Path:
        """Where the embedded PostgreSQL keeps its data when `database_url` is unset."""
        return self.home / "postgres"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ControlPlaneConfig:
        """Builds the configuration from defaults overridden by `ATELIER_*` variables.

        Args:
            environ: The environment to read; `ENV_VARS` names the variable of each field.
                Unset or empty variables keep the default.

        Returns:
            A validated configuration.

        Raises:
            ConfigError: A variable is not a number where one is needed, or a value is
                out of range; the message names the variable.
        """
        values: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        for name, variable in ENV_VARS.items():
            raw = environ.get(variable, "").strip()
            if not raw:
                continue
            kind = types[name]
            if kind == "int":
                try:
                    values[name] = int(raw)
                except ValueError:
                    raise ConfigError(variable, f"must be a whole number, got {raw!r}") from None
            elif kind in ("Path", "Path | None"):
                values[name] = Path(raw)
            else:
                values[name] = raw
        try:
            return cls(**values)
        except ConfigError as error:
            # Name the variable the operator set, not only the field it maps to.
            variable = ENV_VARS.get(error.setting, error.setting)
            raise ConfigError(f"{variable} ({error.setting})", error.detail) from None


def _fail(setting: str, detail: str) -> None:
    raise ConfigError(setting, detail)


def _validate_blob_url(url: str | None, blob_dir: Path | None) -> None:
    if url is None:
        return
    scheme = urlsplit(url).scheme
    if scheme == "s3":
        # Imported here: the adapter pulls in obstore, which `atelier --help` need not load.
        from control_plane.adapters.s3_blobstore import parse_s3_url

        try:
            parse_s3_url(url)
        except ValueError as error:
            _fail("blob_url", f"is invalid: {error}")
    elif scheme == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/") or parts.query or parts.fragment:
            _fail(
                "blob_url", f"is {url!r}; a file URL names an absolute local path, e.g. file:///var/lib/atelier/blobs"
            )
        if blob_dir is not None and Path(parts.path) != blob_dir:
            _fail("blob_url", f"names {parts.path} but blob_dir (ATELIER_BLOB_DIR) is {blob_dir}; set one of them")
    else:
        _fail("blob_url", f"is {url!r}; valid values: s3://bucket/prefix or file:///absolute/path")


def _check_range(setting: str, value: int, low: int, high: int, note: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        suffix = f" ({note})" if note else ""
        _fail(setting, f"is {value!r}; valid values: {low}..{high}{suffix}")


def _validate_listen_address(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        _fail(
            "listen_address",
            f"is {address!r}; valid values: host:port with port 0..65535, e.g. 127.0.0.1:50051",
        )
