"""The fault tests reuse the control-plane integration fixtures (real PostgreSQL, real gRPC).

`clean_state` stays autouse: every test starts on an empty shared database, also those that
run a PostgreSQL or database of their own (they then just do not use it).
"""

from tests.integration.control_plane.conftest import (  # noqa: F401 - fixtures, used by name
    blob_backend,
    blob_dir,
    blobs,
    channel,
    clean_state,
    clock,
    config,
    data_tables,
    database_url,
    keys,
    make_account,
    make_key,
    master_key_file,
    metrics_registry,
    operator,
    policies,
    pool,
    postgres_url,
    server_address,
    stub,
)
