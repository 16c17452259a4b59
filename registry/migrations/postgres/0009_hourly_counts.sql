-- Registry schema, version 9: certificates issued and terminals provisioned per hour and station,
-- counted in the transaction that records the issue or the first provisioning confirmation (so the
-- console's chart reads a few rows per hour, whatever the rate). An upgraded registry starts with
-- no counts: the hours before the upgrade are not backfilled.
CREATE TABLE hourly_counts (
    hour    bigint NOT NULL,  -- hours since the Unix epoch
    station text   NOT NULL,
    kind    text   NOT NULL CHECK (kind IN ('issued', 'provisioned')),
    n       bigint NOT NULL CHECK (n >= 0),
    PRIMARY KEY (hour, station, kind)
);
