-- The deployment's own tenant: the one the launcher's operator key belongs to. Deployment-wide
-- operations (rotating the master key) are refused to every other tenant's keys, admin or not.
ALTER TABLE tenants ADD COLUMN operator boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX tenants_one_operator_idx ON tenants (operator) WHERE operator;
UPDATE tenants SET operator = true WHERE tenant_id = (
    SELECT tenant_id FROM api_keys WHERE name = 'operator' AND 'admin' = ANY (scopes)
    ORDER BY created_at LIMIT 1
);
