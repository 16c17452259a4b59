-- Registry schema, version 4: authentication failures counted across CA instances, so the
-- failure limit (roles.toml `failures_per_minute`) holds for the whole fleet of instances, not
-- per process. Each instance adds what it counted since its last poll (kind 'address' before a
-- signature verified, 'principal' after) to a 10-second bucket; a source is blocked while its
-- buckets of the last minute sum to the limit. Rows older than a minute are deleted.
CREATE TABLE auth_failures (
    kind     text    NOT NULL CHECK (kind IN ('address', 'principal')),
    source   text    NOT NULL,
    bucket   bigint  NOT NULL,
    failures integer NOT NULL,
    PRIMARY KEY (kind, source, bucket)
);
CREATE INDEX auth_failures_by_bucket ON auth_failures (bucket);
