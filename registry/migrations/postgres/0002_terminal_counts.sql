-- Version 2: running counts of terminals by state, class and manufacturer, kept by a trigger in
-- the transaction that writes the terminal (so CountTerminals reads a few rows, not the fleet),
-- and an index for each filter of a terminal list, in serial order (paging).

-- No terminal is written while the counts are first computed (writers of older builds included).
LOCK TABLE terminals IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE terminal_counts (
    dimension text NOT NULL CHECK (dimension IN ('state', 'class', 'manufacturer')),
    value     text NOT NULL,
    n         bigint NOT NULL CHECK (n >= 0),
    PRIMARY KEY (dimension, value)
);

INSERT INTO terminal_counts (dimension, value, n)
    SELECT 'state', state, count(*) FROM terminals GROUP BY state
    UNION ALL SELECT 'class', class, count(*) FROM terminals GROUP BY class
    UNION ALL SELECT 'manufacturer', manufacturer, count(*) FROM terminals GROUP BY manufacturer;

-- Statement-level triggers over transition tables: one upsert per group per statement. (A row
-- trigger would update the same few counter rows once per row, and inside one transaction each
-- update walks the chain of versions the earlier ones left: quadratic in a bulk INSERT.)
CREATE FUNCTION terminal_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Each branch names only the transition tables its event has.
    IF TG_OP = 'INSERT' THEN
        INSERT INTO terminal_counts (dimension, value, n)
        SELECT g.d, g.v, count(*)
          FROM new_rows n
          CROSS JOIN LATERAL (VALUES ('state', n.state), ('class', n.class), ('manufacturer', n.manufacturer)) g(d, v)
         GROUP BY g.d, g.v
        ON CONFLICT (dimension, value) DO UPDATE SET n = terminal_counts.n + EXCLUDED.n;
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE terminal_counts c SET n = c.n - x.k
          FROM (SELECT g.d, g.v, count(*) AS k
                  FROM old_rows o
                  CROSS JOIN LATERAL (VALUES ('state', o.state), ('class', o.class), ('manufacturer', o.manufacturer)) g(d, v)
                 GROUP BY g.d, g.v) x
         WHERE c.dimension = x.d AND c.value = x.v;
    ELSE
        -- Only rows whose counted columns changed; the serial never changes.
        UPDATE terminal_counts c SET n = c.n - x.k
          FROM (SELECT g.d, g.v, count(*) AS k
                  FROM old_rows o JOIN new_rows n ON n.serial = o.serial
                  CROSS JOIN LATERAL (VALUES ('state', o.state), ('class', o.class), ('manufacturer', o.manufacturer)) g(d, v)
                 WHERE (n.state, n.class, n.manufacturer) IS DISTINCT FROM (o.state, o.class, o.manufacturer)
                 GROUP BY g.d, g.v) x
         WHERE c.dimension = x.d AND c.value = x.v;
        INSERT INTO terminal_counts (dimension, value, n)
        SELECT g.d, g.v, count(*)
          FROM old_rows o JOIN new_rows n ON n.serial = o.serial
          CROSS JOIN LATERAL (VALUES ('state', n.state), ('class', n.class), ('manufacturer', n.manufacturer)) g(d, v)
         WHERE (n.state, n.class, n.manufacturer) IS DISTINCT FROM (o.state, o.class, o.manufacturer)
         GROUP BY g.d, g.v
        ON CONFLICT (dimension, value) DO UPDATE SET n = terminal_counts.n + EXCLUDED.n;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER terminals_counted_insert AFTER INSERT ON terminals
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION terminal_counts_apply();
CREATE TRIGGER terminals_counted_update AFTER UPDATE ON terminals
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION terminal_counts_apply();
CREATE TRIGGER terminals_counted_delete AFTER DELETE ON terminals
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION terminal_counts_apply();

CREATE INDEX terminals_state ON terminals (state, serial);
CREATE INDEX terminals_class ON terminals (class, serial);
-- The console's usual pairing: a maker's terminals in one state.
CREATE INDEX terminals_manufacturer_state ON terminals (manufacturer, state, serial);
