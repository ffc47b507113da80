-- 0013: running totals of the retention sweeps, by reason, so /metrics reads a handful of rows.
--
-- Every committed sweep batch writes one audit row (action 'retention.sweep', target_type
-- 'sweep_batch', details {reason, deleted}; control_plane/sweeper.py). Summing those rows at
-- every scrape costs time in proportion to all the batches ever swept. Instead, the insert of
-- each such row adds its count here, in the batch's own transaction: a batch that rolls back
-- (a killed sweeper) counts nothing, one that commits counts once, and sweepers side by side
-- add to the same row in turn (the upsert waits for the row lock, held only from the audit
-- row, the batch's last statement, to its commit). A trigger rather than a statement in the
-- sweeper, so a batch can never be audited without being counted, whichever code writes it:
-- replicas of the previous release keep sweeping during a rolling upgrade after this has run.

-- Taken before anything else, so the backfill below sees every batch committed before this
-- migration and none can commit between the backfill and the trigger (inserts wait for this
-- transaction): each batch is counted exactly once, by one or the other.
LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE sweep_totals (
    -- A `SweepReason` value (the `reason` label of atelier_sweep_deleted_items_total).
    reason     text PRIMARY KEY CHECK (char_length(reason) BETWEEN 1 AND 100),
    -- Items (rows with their blobs), reservations or usage rows the batches deleted or expired.
    items      bigint NOT NULL CHECK (items >= 0),
    batches    bigint NOT NULL CHECK (batches >= 0),
    -- `at` of the latest batch counted (the sweep's "now").
    updated_at timestamptz NOT NULL
);

CREATE FUNCTION count_sweep_batch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A sweep_batch row without a reason or count fails here (NOT NULL), and so its batch:
    -- an uncounted batch would make the total silently wrong.
    INSERT INTO sweep_totals AS total (reason, items, batches, updated_at)
    VALUES (NEW.details ->> 'reason', (NEW.details ->> 'deleted')::bigint, 1, NEW.at)
    ON CONFLICT (reason) DO UPDATE SET
        items = total.items + excluded.items,
        batches = total.batches + 1,
        updated_at = greatest(total.updated_at, excluded.updated_at);
    RETURN NULL;
END;
$$;

CREATE TRIGGER audit_log_counts_sweep_batches
    AFTER INSERT ON audit_log
    FOR EACH ROW WHEN (NEW.action = 'retention.sweep' AND NEW.target_type = 'sweep_batch')
    EXECUTE FUNCTION count_sweep_batch();

INSERT INTO sweep_totals (reason, items, batches, updated_at)
SELECT details ->> 'reason', sum((details ->> 'deleted')::bigint), count(*), max(at)
FROM audit_log WHERE action = 'retention.sweep' AND target_type = 'sweep_batch'
GROUP BY 1;
