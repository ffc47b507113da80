-- 0003: retention sweeps, the opt-out registry, training exports and removal manifests (issue 5).
--
-- Retention deadlines are not stored: they follow from the owner's policy profile (which a
-- tenant can change), tier, legal hold and last activity, so the sweeper computes them at
-- sweep time (control_plane/retention.py) from created_at and last_active_at. These indexes
-- are its queues. Only columns of 0001 are used here.

-- Generated content and uploads by age: the 30-day and 24-hour rules walk these oldest first.
CREATE INDEX content_live_generated_created_idx ON content (created_at)
    WHERE deleted_at IS NULL AND kind = 'generated';
CREATE INDEX content_live_upload_created_idx ON content (created_at)
    WHERE deleted_at IS NULL AND kind = 'upload';
-- The inactivity purge for every tier a profile does not exempt (0001's index covers free only).
CREATE INDEX accounts_sweepable_last_active_idx ON accounts (last_active_at)
    WHERE status = 'active' AND NOT legal_hold AND NOT keep;
-- CheckTrainingEligibility looks content up by the SHA-256 of its bytes.
CREATE INDEX content_sha256_idx ON content (sha256);

-- Opt-out registry: an opt-out of one item also keeps its SHA-256, so a lookup by hash still
-- answers "opted out" after the row is purged; and who recorded it.
ALTER TABLE optouts ADD COLUMN sha256 text CHECK (sha256 ~ '^[0-9a-f]{64}$');
ALTER TABLE optouts ADD COLUMN actor_key_id text;
CREATE INDEX optouts_content_idx ON optouts (content_id) WHERE content_id IS NOT NULL AND withdrawn_at IS NULL;
CREATE INDEX optouts_sha256_idx ON optouts (sha256) WHERE sha256 IS NOT NULL AND withdrawn_at IS NULL;
-- At most one active opt-out per account-wide scope and per item: recording twice is a no-op.
CREATE UNIQUE INDEX optouts_one_active_account_idx ON optouts (account_id)
    WHERE content_id IS NULL AND sha256 IS NULL AND withdrawn_at IS NULL;
CREATE UNIQUE INDEX optouts_one_active_item_idx ON optouts (account_id, sha256)
    WHERE sha256 IS NOT NULL AND withdrawn_at IS NULL;

-- Training exports: the manifest as written.
ALTER TABLE training_exports ADD COLUMN manifest jsonb;
-- A million-row export pays for every index it maintains, and these two buy nothing: nothing
-- reads export items by account (removal manifests join on (export_id, content_id) and
-- content_id), and salted_id = sha256(salt || content_id) is unique whenever the primary key is.
DROP INDEX export_items_account_idx;
ALTER TABLE export_items DROP CONSTRAINT export_items_export_id_salted_id_key;

-- Removal manifests, one row per (export, item): appended when an exported item becomes
-- ineligible (opt-out, consent withdrawal, deletion, erasure, flag, retention, sweep) and
-- never changed. removal_id is the cursor downstream trainers page with.
CREATE TABLE export_removals (
    removal_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    export_id  uuid NOT NULL REFERENCES training_exports (export_id) ON DELETE CASCADE,
    content_id uuid NOT NULL,
    salted_id  text NOT NULL,
    reason     text NOT NULL CHECK (reason IN (
        'opted_out', 'no_consent', 'consent_withdrawn', 'deleted', 'erased', 'past_retention',
        'swept', 'flagged', 'minor', 'private', 'upload', 'account_inactive'
    )),
    removed_at timestamptz NOT NULL,
    UNIQUE (export_id, content_id)
);
CREATE INDEX export_removals_export_idx ON export_removals (export_id, removal_id);
CREATE INDEX export_removals_content_idx ON export_removals (content_id);
CREATE TRIGGER export_removals_append_only
    BEFORE UPDATE OR DELETE ON export_removals
    FOR EACH ROW EXECUTE FUNCTION reject_append_only_change();
