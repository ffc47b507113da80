-- 0005: idempotency keys on reservations, and what the per-account bound on generations in
-- flight reads (issue 8, part 2). Only columns of 0001 are touched besides those added here.

-- A caller-chosen key (1..128 printable ASCII characters) and the SHA-256 of the request it
-- was first used with. A retry with the same key and fingerprint replays the committed
-- reservation (and the content it paid for) instead of charging again.
ALTER TABLE reservations ADD COLUMN idempotency_key text
    CHECK (idempotency_key ~ '^[\x20-\x7e]{1,128}$');
ALTER TABLE reservations ADD COLUMN request_fingerprint bytea
    CHECK (octet_length(request_fingerprint) = 32);
ALTER TABLE reservations ADD CONSTRAINT reservations_key_has_fingerprint
    CHECK ((idempotency_key IS NULL) = (request_fingerprint IS NULL));

-- One live use of a key per account: held (in flight) or committed (its result). A released
-- or expired attempt frees the key for a new one. Keys last as long as their reservation row.
CREATE UNIQUE INDEX reservations_idempotency_key_idx ON reservations (account_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND state IN ('held', 'committed');

-- Reserving at the concurrency bound expires the account's overdue holds first.
CREATE INDEX reservations_account_held_idx ON reservations (account_id, expires_at) WHERE state = 'held';

-- How many of the account's reservations are held, kept by every transition in the same
-- statement or transaction as the reservation's state, so reserving can check the bound on
-- generations in flight against the balance row it already locks (one statement, exact).
ALTER TABLE credit_balances ADD COLUMN held_count integer NOT NULL DEFAULT 0 CHECK (held_count >= 0);
UPDATE credit_balances b SET held_count = h.holds
FROM (SELECT account_id, count(*) AS holds FROM reservations WHERE state = 'held' GROUP BY account_id) h
WHERE b.account_id = h.account_id;
