-- Provenance of generated images (issue 20): what StoreContent marked into each stored file.
-- `watermark_payload` is the 48-bit invisible-watermark payload (a keyed hash of the content
-- id) as a number, so VerifyProvenance can map a payload read from a re-encoded copy back to
-- its content id by Hamming distance (bit_count of the XOR). NULL when no watermark was
-- embedded; `watermark_skipped` then says why. `training_use` is what the signed manifest's
-- training-and-data-mining assertion said when the item was made ('allowed' | 'notAllowed').
CREATE TABLE content_provenance (
    content_id        uuid PRIMARY KEY REFERENCES content (content_id) ON DELETE CASCADE,
    manifest_label    text NOT NULL CHECK (char_length(manifest_label) BETWEEN 1 AND 200),
    training_use      text NOT NULL CHECK (training_use IN ('allowed', 'notAllowed')),
    model_version     text NOT NULL DEFAULT '' CHECK (char_length(model_version) <= 200),
    watermark_payload bigint CHECK (watermark_payload BETWEEN 0 AND 281474976710655),
    watermark_skipped text CHECK (char_length(watermark_skipped) <= 200),
    CHECK ((watermark_payload IS NULL) <> (watermark_skipped IS NULL))
);
-- Exact payload look-ups (an untouched or lightly re-encoded copy reads back exactly).
CREATE INDEX content_provenance_payload_idx ON content_provenance (watermark_payload)
    WHERE watermark_payload IS NOT NULL;
