-- An item's pseudonymous id in an export is sha256(export salt || content id): a function of two
-- values the database already holds. Storing it cost a hash and 65 bytes per exported row, about
-- half of recording a million-row export; it is now computed where it is read
-- (training_exports.PSEUDONYM_SQL), for the few rows a removal manifest lists.
ALTER TABLE export_items DROP COLUMN salted_id;
ALTER TABLE export_removals DROP COLUMN salted_id;
