-- Calls on behalf of an end user (DESIGN.md §9): the account a call named as acting
-- (x-atelier-acting-account metadata, or a verified OIDC token's claim) is audited with the key.
ALTER TABLE audit_log ADD COLUMN acting_account_id uuid;

-- A tenant's identity provider, to verify end users' OIDC ID tokens (x-atelier-user-token):
-- the issuer (`iss`), the audience the tokens are issued to (`aud`), the JSON Web Key Set
-- (a JSON document, or an https/file URL to fetch it from), and the claim naming the atelier
-- account. With `require_user_token`, an acting account is only accepted with a valid token.
ALTER TABLE tenants
    ADD COLUMN oidc_issuer text CHECK (char_length(oidc_issuer) BETWEEN 1 AND 500),
    ADD COLUMN oidc_audience text CHECK (char_length(oidc_audience) BETWEEN 1 AND 500),
    ADD COLUMN oidc_jwks text CHECK (char_length(oidc_jwks) BETWEEN 1 AND 65536),
    ADD COLUMN oidc_account_claim text NOT NULL DEFAULT 'sub' CHECK (char_length(oidc_account_claim) BETWEEN 1 AND 100),
    ADD COLUMN require_user_token boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT tenants_oidc_complete CHECK (
        (oidc_issuer IS NULL) = (oidc_audience IS NULL) AND (oidc_issuer IS NULL) = (oidc_jwks IS NULL)
        AND (NOT require_user_token OR oidc_issuer IS NOT NULL)
    );

-- Keys with 'act-for-any' may act for any account of their tenant without naming it.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_scopes_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_scopes_check CHECK (
    cardinality(scopes) >= 1
    AND scopes <@ ARRAY['generate', 'read', 'privacy', 'admin', 'act-for-any']::text[]
);
