-- Registry schema, version 9: certificates issued and terminals provisioned per hour and station,
-- counted in the transaction that records the issue (or approved re-key) or the first
-- provisioning confirmation, so the console's chart reads a few rows per hour whatever the rate.
CREATE TABLE hourly_counts (
    hour    bigint NOT NULL,  -- hours since the Unix epoch
    station text   NOT NULL,
    kind    text   NOT NULL CHECK (kind IN ('issued', 'provisioned')),
    n       bigint NOT NULL CHECK (n >= 0),
    PRIMARY KEY (hour, station, kind)
);

-- No certificate is written while the counts are first computed (writers of older builds included).
LOCK TABLE certs IN SHARE ROW EXCLUSIVE MODE;

-- From the certificates already recorded: each one a station asked for, in its issue hour, and
-- its first provisioning confirmation, in that one's hour.
INSERT INTO hourly_counts (hour, station, kind, n)
SELECT hour, station, kind, count(*)
FROM (
    SELECT (r ->> 'issued_ms')::bigint / 3600000 AS hour, r ->> 'station' AS station, 'issued' AS kind
      FROM (SELECT convert_from(record, 'UTF8')::jsonb AS r FROM certs) c
     WHERE r ->> 'station' IS NOT NULL
    UNION ALL
    SELECT (r -> 'provisioning' ->> 'at_ms')::bigint / 3600000, r -> 'provisioning' ->> 'station', 'provisioned'
      FROM (SELECT convert_from(record, 'UTF8')::jsonb AS r FROM certs) c
     WHERE jsonb_typeof(r -> 'provisioning') = 'object'
) e
GROUP BY hour, station, kind;
