-- Registry schema, version 7: the audit log indexed by actor and by target, so a principal's last activity and a
-- terminal's (or certificate's) entries are found newest first however old they are. The
-- columns repeat fields of the hashed entry (the chain still covers `entry` alone); writers of
-- this build fill them in the statement that appends the entry.

-- No entry is appended while the older ones are indexed (writers of older builds included).
LOCK TABLE audit IN SHARE ROW EXCLUSIVE MODE;

ALTER TABLE audit ADD COLUMN actor text, ADD COLUMN target text;

-- An entry that does not parse (only a tampered one: chain verification reports it) stays
-- unindexed instead of failing the migration; so does a field longer than 256 bytes (a B-tree
-- entry holds ~2.7 KB; refusals audit whatever a caller sent), as in `audit::index_keys`.
CREATE FUNCTION hsca_audit_field(entry bytea, field text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    value text;
BEGIN
    value := convert_from(entry, 'UTF8')::jsonb ->> field;
    RETURN CASE WHEN octet_length(value) <= 256 THEN value END;
EXCEPTION WHEN others THEN
    RETURN NULL;
END $$;
UPDATE audit SET actor = hsca_audit_field(entry, 'actor'), target = hsca_audit_field(entry, 'target');

-- An instance of an older build still serving after this migration (a rolling upgrade) appends
-- entries without the columns: they are filled here, so the indexes miss none.
CREATE FUNCTION hsca_audit_index_fields() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.actor IS NULL AND NEW.target IS NULL THEN
        NEW.actor := hsca_audit_field(NEW.entry, 'actor');
        NEW.target := hsca_audit_field(NEW.entry, 'target');
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_index_fields BEFORE INSERT ON audit FOR EACH ROW EXECUTE FUNCTION hsca_audit_index_fields();

CREATE INDEX audit_by_actor ON audit (actor, seq);
CREATE INDEX audit_by_target ON audit (target, seq);
