-- 0004: API key listing, rotation and revocation (issue 8, part 1).
--
-- Key rotation: a rotated key names the key that replaced it, and its revoked_at may lie in
-- the future (the end of the rotation's grace period; the key authenticates until then).
ALTER TABLE api_keys ADD COLUMN replaced_by text REFERENCES api_keys (key_id);
ALTER TABLE api_keys ADD CONSTRAINT api_keys_replaced_keys_are_revoked
    CHECK (replaced_by IS NULL OR revoked_at IS NOT NULL);

-- ListApiKeys pages newest first by (created_at, key_id) within a tenant.
CREATE INDEX api_keys_tenant_page_idx ON api_keys (tenant_id, created_at DESC, key_id DESC);
DROP INDEX api_keys_tenant_idx;
