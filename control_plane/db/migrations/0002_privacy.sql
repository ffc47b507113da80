-- 0002: privacy rights (issue 4): encrypted prompts, moderation state on content, consent
-- purposes and policy versions, DSR details, and an index for "audit entries about an account".

-- Consent purposes of the product (DESIGN.md §9: a guardian's consent is purpose
-- `processing` with method `guardian`; the application writes methods settings|api|guardian).
ALTER TABLE consents DROP CONSTRAINT consents_purpose_check;
ALTER TABLE consents ADD CONSTRAINT consents_purpose_check
    CHECK (purpose IN ('training', 'analytics', 'marketing', 'processing'));
-- Version of the privacy policy the user saw when the record was made.
ALTER TABLE consents ADD COLUMN policy_version text NOT NULL DEFAULT ''
    CHECK (char_length(policy_version) <= 50);

-- The prompt, sealed with the account's data key (AES-256-GCM, content id as associated
-- data); `prompt` stays empty for content stored encrypted.
ALTER TABLE content ADD COLUMN prompt_sealed bytea;
-- Moderation flagged the item: never public, never exported.
ALTER TABLE content ADD COLUMN flagged boolean NOT NULL DEFAULT false;
ALTER TABLE content ADD CONSTRAINT content_flagged_never_public CHECK (NOT (flagged AND visibility = 'public'));
-- The owner was under 18 when it was stored: never eligible for training exports.
ALTER TABLE content ADD COLUMN created_by_minor boolean NOT NULL DEFAULT false;

DROP INDEX content_public_created_idx;
CREATE INDEX content_public_created_idx ON content (created_at DESC, content_id DESC)
    WHERE visibility = 'public' AND deleted_at IS NULL AND NOT flagged;

-- Which rule of the policy matched, and the prompt itself only when the policy keeps it.
ALTER TABLE moderation_flags ADD COLUMN rule text NOT NULL DEFAULT '' CHECK (char_length(rule) <= 200);
ALTER TABLE moderation_flags ADD COLUMN prompt_text text CHECK (char_length(prompt_text) <= 2000);

-- Erasure of one item names it (no foreign key: the item is gone once the request is done).
ALTER TABLE dsr_requests ADD COLUMN content_id uuid;
ALTER TABLE dsr_requests ADD COLUMN requested_by_key_id text;
ALTER TABLE dsr_requests ADD COLUMN archive_size_bytes bigint NOT NULL DEFAULT 0 CHECK (archive_size_bytes >= 0);
CREATE INDEX dsr_requests_due_idx ON dsr_requests (due_at, dsr_id);

-- `atelier audit --account`: entries whose details name the account.
CREATE INDEX audit_log_account_idx ON audit_log ((details ->> 'account_id'), id)
    WHERE details ? 'account_id';
