-- 0006: export items are checked once per statement, not once per row (issue 5, export speed).
--
-- The foreign key of export_items on training_exports ran PostgreSQL's referential check
-- (one index probe through SPI) for every inserted row: about half the cost of recording a
-- million-row export. Every row of an export's INSERT names the same export, so one check
-- per statement over the inserted rows (a transition table) keeps the same guarantee, and
-- the cascade becomes a trigger on the (few) export rows.

ALTER TABLE export_items DROP CONSTRAINT export_items_export_id_fkey;

CREATE FUNCTION export_items_check_export() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    orphan uuid;
BEGIN
    SELECT n.export_id INTO orphan FROM (SELECT DISTINCT export_id FROM added) n
    WHERE NOT EXISTS (SELECT 1 FROM training_exports t WHERE t.export_id = n.export_id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'export_items names training export % which does not exist', orphan
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER export_items_export_exists
    AFTER INSERT ON export_items REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION export_items_check_export();

CREATE FUNCTION export_items_check_export_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM training_exports t WHERE t.export_id = NEW.export_id) THEN
        RAISE EXCEPTION 'export_items names training export % which does not exist', NEW.export_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER export_items_export_exists_on_update
    BEFORE UPDATE OF export_id ON export_items
    FOR EACH ROW EXECUTE FUNCTION export_items_check_export_update();

CREATE FUNCTION training_exports_delete_items() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM export_items WHERE export_id = OLD.export_id;
    RETURN OLD;
END;
$$;

CREATE TRIGGER training_exports_cascade_items
    AFTER DELETE ON training_exports
    FOR EACH ROW EXECUTE FUNCTION training_exports_delete_items();

CREATE FUNCTION training_exports_reject_id_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'training export % has export items: its export_id cannot change', OLD.export_id
        USING ERRCODE = 'foreign_key_violation';
END;
$$;

CREATE TRIGGER training_exports_keep_id
    BEFORE UPDATE OF export_id ON training_exports
    FOR EACH ROW WHEN (OLD.export_id IS DISTINCT FROM NEW.export_id)
    EXECUTE FUNCTION training_exports_reject_id_change();

CREATE FUNCTION training_exports_truncate_items() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- DELETE, not TRUNCATE: a TRUNCATE naming both tables has export_items in use (and empty).
    DELETE FROM export_items;
    RETURN NULL;
END;
$$;

-- TRUNCATE training_exports CASCADE emptied export_items through the foreign key; it still does.
CREATE TRIGGER training_exports_truncate_items
    AFTER TRUNCATE ON training_exports
    FOR EACH STATEMENT EXECUTE FUNCTION training_exports_truncate_items();
