"""Wires the control plane's adapters (database pool, blob store, key store, policies, moderation,
clock, metrics) from config."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import TracebackType

from prometheus_client import CollectorRegistry

from control_plane import crypto
from control_plane.adapters.blobstore import BlobStore, LocalBlobStore
from control_plane.adapters.keystore import KeyStore, PostgresKeyStore
from control_plane.caller_facts import CallerFacts
from control_plane.clock import Clock, SystemClock
from control_plane.config import ENV_VARS, ConfigError, ControlPlaneConfig
from control_plane.crypto import MasterKeyError
from control_plane.db.embedded import EmbeddedPostgres
from control_plane.db.migrations import apply_migrations
from control_plane.db.pool import Pool, open_pool
from control_plane.moderation import CheckerFactory, PolicyModerationChecker
from control_plane.policy import PolicyProfile, PolicyRegistry
from control_plane.provenance.certificates import (
    SigningCredentials,
    SigningCredentialsError,
    ensure_development_credentials,
    load_signing_credentials,
)
from control_plane.user_tokens import UserTokenVerifier

_logger = logging.getLogger(__name__)


@dataclass
class ControlPlaneDeps:
    """What the servicer and the jobs run on. Closing it closes the pool."""

    pool: Pool
    blobs: BlobStore
    """The plain store; the servicer wraps it in an `EncryptedBlobStore`."""
    clock: Clock
    keys: KeyStore
    """Per-account data keys, wrapped by the master key."""
    policies: PolicyRegistry
    """The policy profiles tenants follow."""
    moderation: CheckerFactory = PolicyModerationChecker
    """Builds the moderation checker of a profile's policy."""
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    """Where metrics register; the server process passes prometheus_client's default."""
    user_tokens: UserTokenVerifier = field(default_factory=UserTokenVerifier)
    """Verifies end users' ID tokens; keeps the tenants' key sets between calls."""
    signing: SigningCredentials | None = None
    """Signs generated images' C2PA manifests. None stores images as sent, unmarked (tests of
    other areas); `bootstrap` always sets it."""
    caller_facts: CallerFacts = field(default_factory=lambda: CallerFacts.with_ttl(0))
    """API keys and tenant settings read recently; off unless given (`bootstrap` sets the config's)."""

    applied_migrations: list[str] = field(default_factory=list)
    """Versions `bootstrap` applied at start-up (empty when the schema was current)."""

    def close(self) -> None:
        """Closes the pool (waiting for borrowed connections to come back)."""
        self.pool.close()

    def __enter__(self) -> ControlPlaneDeps:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def resolve_database_url(config: ControlPlaneConfig) -> str:
    """`config.database_url`, or the URL of the embedded server (started if not running)."""
    if config.database_url is not None:
        return config.database_url
    return EmbeddedPostgres(config.embedded_data_dir).start()


def bootstrap(
    config: ControlPlaneConfig,
    *,
    clock: Clock | None = None,
    registry: CollectorRegistry | None = None,
    migrate: bool = True,
) -> ControlPlaneDeps:
    """Opens the pool, applies migrations and opens the blob store.

    Args:
        config: The configuration.
        clock: Time source; the wall clock when None.
        registry: Metrics registry; a fresh one when None.
        migrate: Apply pending migrations (safe with concurrent starters).

    Returns:
        The dependencies; close them (or use them as a context manager) when done.

    Raises:
        ConfigError: The master key or a policy profile is invalid, or a tenant follows a
            profile that is not loaded.
        psycopg_pool.PoolTimeout: The database could not be reached.
        EmbeddedPostgresError: The embedded server (no database_url) did not start.
    """
    keys = load_key_store(config)
    policies = load_policies(config)
    signing = load_signing(config)
    pool = open_pool(resolve_database_url(config), config.pool_min_size, config.pool_max_size)
    try:
        applied = apply_migrations(pool) if migrate else []
        with pool.connection() as conn:
            policies.check_tenants(conn)
        blobs = open_blob_store(config)
    except BaseException:
        pool.close()
        raise
    return ControlPlaneDeps(
        pool=pool,
        blobs=blobs,
        keys=keys,
        policies=policies,
        clock=clock if clock is not None else SystemClock(),
        registry=registry if registry is not None else CollectorRegistry(),
        applied_migrations=applied,
        signing=signing,
        caller_facts=CallerFacts.with_ttl(config.caller_cache_ttl_ms / 1000),
    )


def open_blob_store(config: ControlPlaneConfig) -> BlobStore:
    """The configured blob store: the `s3://` bucket of `blob_url`, else the local directory.

    Raises:
        ConfigError: The object store cannot be configured from the URL and the AWS settings.
    """
    url = config.blob_object_store_url
    if url is None:
        return LocalBlobStore(config.blob_root)
    from control_plane.adapters.s3_blobstore import S3BlobStore

    try:
        return S3BlobStore(url)
    except ValueError as error:
        raise ConfigError("blob_url", str(error)) from None


def load_signing(config: ControlPlaneConfig) -> SigningCredentials:
    """The configured C2PA signing chain and key, or the development pair under `home`
    (created on first use, with a warning that it is for development only).

    Raises:
        ConfigError: A file is unreadable, or the key is not the chain's ES256 key.
    """
    try:
        if config.c2pa_cert_file is not None and config.c2pa_key_file is not None:
            return load_signing_credentials(config.c2pa_cert_file, config.c2pa_key_file, config.c2pa_trust_anchors_file)
        return ensure_development_credentials(config.development_c2pa_dir)
    except SigningCredentialsError as error:
        raise ConfigError("c2pa_cert_file", str(error)) from None


def load_key_store(config: ControlPlaneConfig) -> PostgresKeyStore:
    """The key store on the configured master key (`master_key`, else the key file, created
    under `home` when neither is configured).

    Raises:
        ConfigError: The master key is malformed or its file unreadable.
    """
    try:
        if config.master_key:
            return PostgresKeyStore(crypto.MasterKey.from_base64(config.master_key, where="ATELIER_MASTER_KEY"))
        if config.master_key_file is not None:
            return PostgresKeyStore(crypto.read_master_key_file(config.master_key_file), config.master_key_file)
        path = config.master_key_path
        if not path.exists():
            _logger.warning("no master key configured: created %s (set ATELIER_MASTER_KEY_FILE in production)", path)
        return PostgresKeyStore(crypto.ensure_master_key_file(path), path)
    except MasterKeyError as error:
        raise ConfigError("master_key", str(error)) from None


def load_policies(config: ControlPlaneConfig) -> PolicyRegistry:
    """Every policy profile in `config.policy_root`, with the cluster's default picked.

    Raises:
        ConfigError: A profile file is invalid, or `policy_profile` names none.
    """
    base = PolicyProfile(default_visibility=config.default_visibility, minimum_age=config.minimum_age)
    try:
        return PolicyRegistry.load(profile=config.policy_profile, directory=config.policy_root, base=base)
    except ConfigError as error:
        if error.setting != "policy_profile":
            raise
        # Name the variable the operator set.
        raise ConfigError(ENV_VARS["policy_profile"], error.detail) from None
