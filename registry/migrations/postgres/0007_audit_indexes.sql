-- Registry schema, version 7: the audit log indexed by actor and by target, so a principal's last activity and a
-- terminal's (or certificate's) entries are found newest first however old they are. The
-- columns repeat fields of the hashed entry (the chain still covers `entry` alone); writers of
-- this build fill them in the statement that appends the entry.

-- No entry is appended while the older ones are indexed (writers of older builds included).
LOCK TABLE audit IN SHARE ROW EXCLUSIVE MODE;

ALTER TABLE audit ADD COLUMN actor text, ADD COLUMN target text;

-- An entry that does not parse (only a tampered one: chain verification reports it) stays
-- unindexed instead of failing the migration.
CREATE FUNCTION hsca_audit_field(entry bytea, field text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    RETURN convert_from(entry, 'UTF8')::jsonb ->> field;
EXCEPTION WHEN others THEN
    RETURN NULL;
END $$;
UPDATE audit SET actor = hsca_audit_field(entry, 'actor'), target = hsca_audit_field(entry, 'target');
DROP FUNCTION hsca_audit_field(bytea, text);

CREATE INDEX audit_by_actor ON audit (actor, seq);
CREATE INDEX audit_by_target ON audit (target, seq);
