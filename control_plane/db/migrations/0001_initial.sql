-- 0001: the schema of the whole product (DESIGN.md §6).
--
-- Tables later issues fill (account_keys, consents, optouts, training exports, DSR,
-- moderation, usage) are created now so the model is reviewed once and later migrations
-- only add. Enumerations are text with CHECK constraints: readable in psql, and a new value
-- is one ALTER ... CHECK in a later migration.
--
-- Times are written by the application (time is a parameter, so tests and `--as-of` can
-- move it); the DEFAULT now() clauses only serve hand-written SQL.

-- Rejects UPDATE and DELETE on append-only tables (ledger, audit log, consents). TRUNCATE is
-- deliberately not blocked: it is an operator's tool (and the tests'), not an application path.
CREATE FUNCTION reject_append_only_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation',
              HINT = 'write a new row (a correcting entry) instead';
END;
$$;

------------------------------------------------------------------------------------------
-- Tenants and accounts
------------------------------------------------------------------------------------------

-- A tenant is a service that integrates atelier; API keys and accounts belong to one.
CREATE TABLE tenants (
    tenant_id      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name           text NOT NULL UNIQUE CHECK (char_length(name) BETWEEN 1 AND 100),
    -- Policy profile (retention, consent mode, visibility...) the tenant's accounts follow.
    policy_profile text NOT NULL DEFAULT 'default' CHECK (char_length(policy_profile) BETWEEN 1 AND 100),
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- No personal data here: birth dates and the like live in account_personal, so an erasure
-- can delete them and leave a pseudonymous tombstone that ledger and audit rows point to.
CREATE TABLE accounts (
    account_id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id          uuid NOT NULL REFERENCES tenants (tenant_id),
    tier               text NOT NULL DEFAULT 'free' CHECK (tier IN ('free', 'premium')),
    status             text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'erased')),
    default_visibility text NOT NULL DEFAULT 'private' CHECK (default_visibility IN ('private', 'public')),
    created_at         timestamptz NOT NULL DEFAULT now(),
    -- Last generation or store; drives the inactivity purge.
    last_active_at     timestamptz NOT NULL DEFAULT now(),
    -- Content is kept whatever the retention rules say while a legal hold is on.
    legal_hold         boolean NOT NULL DEFAULT false,
    -- Operator's exemption from retention sweeps (e.g. the demo account).
    keep               boolean NOT NULL DEFAULT false,
    erased_at          timestamptz,
    CHECK ((status = 'erased') = (erased_at IS NOT NULL))
);
CREATE INDEX accounts_tenant_created_idx ON accounts (tenant_id, created_at);
-- Inactivity purge: active free accounts by last activity.
CREATE INDEX accounts_inactive_free_idx ON accounts (last_active_at)
    WHERE status = 'active' AND tier = 'free' AND NOT legal_hold AND NOT keep;

-- Age evidence, kept apart from content and deleted on erasure.
CREATE TABLE account_personal (
    account_id        uuid PRIMARY KEY REFERENCES accounts (account_id) ON DELETE CASCADE,
    birth_date        date,
    -- Age in whole years the integrating service attested, when no birth date is collected.
    age_attested      smallint CHECK (age_attested BETWEEN 1 AND 150),
    -- Under the guardian age where the profile requires guardian consent.
    guardian_required boolean NOT NULL DEFAULT false,
    recorded_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (birth_date IS NOT NULL OR age_attested IS NOT NULL)
);

------------------------------------------------------------------------------------------
-- Keys
------------------------------------------------------------------------------------------

-- Service API keys. Only a SHA-256 of the secret is stored; key_id is the public part.
CREATE TABLE api_keys (
    key_id        text PRIMARY KEY CHECK (key_id ~ '^ak_[0-9a-f]{16}$'),
    tenant_id     uuid NOT NULL REFERENCES tenants (tenant_id),
    name          text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    secret_sha256 text NOT NULL CHECK (secret_sha256 ~ '^[0-9a-f]{64}$'),
    scopes        text[] NOT NULL CHECK (
        cardinality(scopes) >= 1
        AND scopes <@ ARRAY['generate', 'read', 'privacy', 'admin']::text[]
    ),
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id, created_at);

-- Per-account data keys (DEKs) wrapped by a master key. Erasure destroys the key: the
-- wrapped DEK is overwritten with NULL and destroyed_at set, which makes the account's
-- encrypted blobs unreadable even in backups.
CREATE TABLE account_keys (
    key_id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id     uuid NOT NULL REFERENCES accounts (account_id),
    -- Identifies the master key that wrapped the DEK, for `atelier keys rotate-master`.
    master_key_id  text NOT NULL CHECK (char_length(master_key_id) BETWEEN 1 AND 200),
    wrapped_dek    bytea,
    created_at     timestamptz NOT NULL DEFAULT now(),
    destroyed_at   timestamptz,
    CHECK ((wrapped_dek IS NULL) = (destroyed_at IS NOT NULL))
);
-- At most one live key per account.
CREATE UNIQUE INDEX account_keys_live_idx ON account_keys (account_id) WHERE destroyed_at IS NULL;
CREATE INDEX account_keys_master_idx ON account_keys (master_key_id) WHERE destroyed_at IS NULL;

------------------------------------------------------------------------------------------
-- Credits
------------------------------------------------------------------------------------------

-- Cache of the ledger, kept in the same transaction as every ledger row: total = sum of the
-- ledger's deltas, held = sum of held reservations. The CHECKs make overspending impossible
-- even for a buggy caller.
CREATE TABLE credit_balances (
    account_id uuid PRIMARY KEY REFERENCES accounts (account_id),
    total      bigint NOT NULL DEFAULT 0,
    held       bigint NOT NULL DEFAULT 0,
    CHECK (total >= 0),
    CHECK (held >= 0),
    CHECK (held <= total)
);

CREATE TABLE reservations (
    reservation_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id     uuid NOT NULL REFERENCES accounts (account_id),
    amount         bigint NOT NULL CHECK (amount > 0),
    state          text NOT NULL DEFAULT 'held'
                   CHECK (state IN ('held', 'committed', 'released', 'expired')),
    purpose        text NOT NULL DEFAULT '' CHECK (char_length(purpose) <= 200),
    -- The API key that reserved, for the audit trail.
    actor_key_id   text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    settled_at     timestamptz,
    CHECK (expires_at > created_at),
    CHECK ((state = 'held') = (settled_at IS NULL))
);
-- The expiry sweeper's queue: only held reservations, oldest expiry first.
CREATE INDEX reservations_held_expiry_idx ON reservations (expires_at) WHERE state = 'held';
CREATE INDEX reservations_account_idx ON reservations (account_id, created_at);

-- Append-only: grants are positive, charges negative. A charge names its reservation, and a
-- reservation can be charged at most once (UNIQUE), whatever the application does.
CREATE TABLE credit_ledger (
    entry_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id     uuid NOT NULL REFERENCES accounts (account_id),
    delta          bigint NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('grant', 'charge')),
    reservation_id uuid UNIQUE REFERENCES reservations (reservation_id),
    reason         text NOT NULL DEFAULT '' CHECK (char_length(reason) <= 200),
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'grant' AND delta > 0) OR (kind = 'charge' AND delta < 0)),
    CHECK (kind <> 'charge' OR reservation_id IS NOT NULL)
);
CREATE INDEX credit_ledger_account_idx ON credit_ledger (account_id, entry_id DESC);
CREATE TRIGGER credit_ledger_append_only
    BEFORE UPDATE OR DELETE ON credit_ledger
    FOR EACH ROW EXECUTE FUNCTION reject_append_only_change();

------------------------------------------------------------------------------------------
-- Content
------------------------------------------------------------------------------------------

CREATE TABLE content (
    content_id     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id     uuid NOT NULL REFERENCES accounts (account_id),
    kind           text NOT NULL CHECK (kind IN ('generated', 'upload')),
    media_type     text NOT NULL CHECK (char_length(media_type) BETWEEN 1 AND 100),
    visibility     text NOT NULL CHECK (visibility IN ('private', 'public')),
    blob_key       text NOT NULL UNIQUE,
    -- Of the plaintext, hex.
    sha256         text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes     bigint NOT NULL CHECK (size_bytes > 0),
    prompt         text NOT NULL DEFAULT '' CHECK (char_length(prompt) <= 2000),
    parameters     jsonb NOT NULL DEFAULT '{}'::jsonb,
    model          text NOT NULL DEFAULT '',
    -- The reservation that paid for it, when stored with commit_reservation_id.
    reservation_id uuid REFERENCES reservations (reservation_id),
    -- account_keys.key_id the blob is encrypted with; NULL while blobs are plaintext.
    encryption_key_id uuid REFERENCES account_keys (key_id),
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- When retention removes it; NULL when no rule applies.
    expires_at     timestamptz,
    -- Soft delete: hidden at once, row and blob purged after purge_after.
    deleted_at     timestamptz,
    purge_after    timestamptz,
    CHECK (purge_after IS NULL OR deleted_at IS NOT NULL)
);
-- An account's gallery, newest first (keyset pagination on created_at, content_id).
CREATE INDEX content_account_created_idx ON content (account_id, created_at DESC, content_id DESC)
    WHERE deleted_at IS NULL;
-- The public gallery.
CREATE INDEX content_public_created_idx ON content (created_at DESC, content_id DESC)
    WHERE visibility = 'public' AND deleted_at IS NULL;
-- Retention sweep: live content past its expiry.
CREATE INDEX content_expires_idx ON content (expires_at)
    WHERE deleted_at IS NULL AND expires_at IS NOT NULL;
-- Purge sweep: soft-deleted content due for removal.
CREATE INDEX content_purge_idx ON content (purge_after) WHERE deleted_at IS NOT NULL;
CREATE INDEX content_reservation_idx ON content (reservation_id) WHERE reservation_id IS NOT NULL;

------------------------------------------------------------------------------------------
-- Privacy: consent, opt-out, training exports, data-subject requests
------------------------------------------------------------------------------------------

-- Append-only record of consent given and withdrawn (granted = false), with when, how and
-- where it was collected; the current state is the newest row per (account, purpose).
CREATE TABLE consents (
    consent_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id   uuid NOT NULL REFERENCES accounts (account_id),
    purpose      text NOT NULL CHECK (purpose IN ('training', 'processing', 'guardian')),
    granted      boolean NOT NULL,
    -- How it was collected, e.g. "checkbox", "settings", "guardian_verification".
    method       text NOT NULL CHECK (char_length(method) BETWEEN 1 AND 100),
    -- Where, e.g. "web", "api", "import".
    source       text NOT NULL CHECK (char_length(source) BETWEEN 1 AND 100),
    actor_key_id text,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    details      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX consents_current_idx ON consents (account_id, purpose, recorded_at DESC, consent_id DESC);
CREATE TRIGGER consents_append_only
    BEFORE UPDATE OR DELETE ON consents
    FOR EACH ROW EXECUTE FUNCTION reject_append_only_change();

-- The opt-out registry: an account's content (or one item) leaves every future training
-- export; past exports get removal manifests (manifested_at marks that work done).
CREATE TABLE optouts (
    optout_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id    uuid NOT NULL REFERENCES accounts (account_id),
    -- NULL: all of the account's content.
    content_id    uuid REFERENCES content (content_id) ON DELETE SET NULL,
    source        text NOT NULL CHECK (char_length(source) BETWEEN 1 AND 100),
    created_at    timestamptz NOT NULL DEFAULT now(),
    withdrawn_at  timestamptz,
    manifested_at timestamptz
);
CREATE INDEX optouts_active_idx ON optouts (account_id) WHERE withdrawn_at IS NULL;
CREATE INDEX optouts_unmanifested_idx ON optouts (created_at) WHERE manifested_at IS NULL;

CREATE TABLE training_exports (
    export_id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id           uuid REFERENCES tenants (tenant_id),
    state               text NOT NULL DEFAULT 'pending'
                        CHECK (state IN ('pending', 'running', 'completed', 'failed')),
    consent_mode        text NOT NULL CHECK (consent_mode IN ('opt_in', 'opt_out')),
    -- Per-export salt of the pseudonymous ids; never leaves the control plane.
    salt                bytea NOT NULL,
    location            text,
    item_count          bigint NOT NULL DEFAULT 0 CHECK (item_count >= 0),
    requested_by_key_id text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    completed_at        timestamptz
);
CREATE INDEX training_exports_state_idx ON training_exports (state, created_at);

-- What each export contained, mapping salted ids back to content: only to build removal
-- manifests. No foreign key to content: these rows outlive purged content on purpose.
CREATE TABLE export_items (
    export_id  uuid NOT NULL REFERENCES training_exports (export_id) ON DELETE CASCADE,
    content_id uuid NOT NULL,
    account_id uuid NOT NULL,
    salted_id  text NOT NULL,
    PRIMARY KEY (export_id, content_id),
    UNIQUE (export_id, salted_id)
);
CREATE INDEX export_items_account_idx ON export_items (account_id);
CREATE INDEX export_items_content_idx ON export_items (content_id);

CREATE TABLE removal_manifests (
    manifest_id  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    export_id    uuid NOT NULL REFERENCES training_exports (export_id),
    reason       text NOT NULL CHECK (reason IN ('optout', 'consent_withdrawn', 'erasure', 'deleted')),
    item_count   bigint NOT NULL DEFAULT 0 CHECK (item_count >= 0),
    location     text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz
);
CREATE INDEX removal_manifests_export_idx ON removal_manifests (export_id, created_at);

CREATE TABLE removal_manifest_items (
    manifest_id uuid NOT NULL REFERENCES removal_manifests (manifest_id) ON DELETE CASCADE,
    salted_id   text NOT NULL,
    PRIMARY KEY (manifest_id, salted_id)
);

-- Data-subject requests (export, erasure) with their legal deadline.
CREATE TABLE dsr_requests (
    dsr_id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id      uuid NOT NULL REFERENCES accounts (account_id),
    kind            text NOT NULL CHECK (kind IN ('export', 'erasure')),
    state           text NOT NULL DEFAULT 'received'
                    CHECK (state IN ('received', 'in_progress', 'completed', 'rejected')),
    received_at     timestamptz NOT NULL DEFAULT now(),
    due_at          timestamptz NOT NULL,
    completed_at    timestamptz,
    result_location text,
    details         jsonb NOT NULL DEFAULT '{}'::jsonb,
    CHECK (due_at >= received_at),
    CHECK ((state IN ('completed', 'rejected')) = (completed_at IS NOT NULL))
);
-- Work queue and `dsr list --overdue`: open requests by deadline.
CREATE INDEX dsr_requests_open_due_idx ON dsr_requests (due_at)
    WHERE state IN ('received', 'in_progress');
CREATE INDEX dsr_requests_account_idx ON dsr_requests (account_id, received_at);

------------------------------------------------------------------------------------------
-- Moderation, audit, usage
------------------------------------------------------------------------------------------

-- What moderation flagged. No prompt text: a hash links repeated prompts without keeping them.
CREATE TABLE moderation_flags (
    flag_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id    uuid REFERENCES accounts (account_id),
    content_id    uuid REFERENCES content (content_id) ON DELETE SET NULL,
    stage         text NOT NULL CHECK (stage IN ('prompt', 'output')),
    category      text NOT NULL CHECK (char_length(category) BETWEEN 1 AND 100),
    action        text NOT NULL CHECK (action IN ('blocked', 'flagged')),
    score         real,
    policy        text NOT NULL DEFAULT '',
    prompt_sha256 text CHECK (prompt_sha256 ~ '^[0-9a-f]{64}$'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    reviewed_at   timestamptz,
    review_outcome text CHECK (review_outcome IN ('upheld', 'overturned'))
);
CREATE INDEX moderation_flags_account_idx ON moderation_flags (account_id, created_at);
CREATE INDEX moderation_flags_unreviewed_idx ON moderation_flags (created_at) WHERE reviewed_at IS NULL;

-- Append-only trail of every state change: "whose data, which keys, when".
CREATE TABLE audit_log (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    -- API key that acted; NULL for the system (sweepers, launcher bootstrap).
    actor_key_id text,
    tenant_id    uuid,
    -- Joins the row to the server's logs.
    request_id   text,
    action       text NOT NULL CHECK (char_length(action) BETWEEN 1 AND 100),
    target_type  text NOT NULL CHECK (char_length(target_type) BETWEEN 1 AND 50),
    target_id    text NOT NULL,
    details      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_target_idx ON audit_log (target_type, target_id, at);
CREATE INDEX audit_log_actor_idx ON audit_log (actor_key_id, at) WHERE actor_key_id IS NOT NULL;
CREATE INDEX audit_log_at_idx ON audit_log USING brin (at);
CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION reject_append_only_change();

-- Aggregated usage, kept two years: per tenant and model, no account ids, so it holds no
-- personal data and survives erasure.
CREATE TABLE usage_daily (
    day             date NOT NULL,
    tenant_id       uuid NOT NULL REFERENCES tenants (tenant_id),
    model           text NOT NULL DEFAULT '',
    generations     bigint NOT NULL DEFAULT 0 CHECK (generations >= 0),
    images          bigint NOT NULL DEFAULT 0 CHECK (images >= 0),
    credits_charged bigint NOT NULL DEFAULT 0 CHECK (credits_charged >= 0),
    PRIMARY KEY (day, tenant_id, model)
);
