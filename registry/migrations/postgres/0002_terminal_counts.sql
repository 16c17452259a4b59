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

CREATE FUNCTION terminal_counts_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE terminal_counts SET n = n - 1
         WHERE (dimension, value) IN (('state', OLD.state), ('class', OLD.class), ('manufacturer', OLD.manufacturer));
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO terminal_counts (dimension, value, n)
             VALUES ('state', NEW.state, 1), ('class', NEW.class, 1), ('manufacturer', NEW.manufacturer, 1)
        ON CONFLICT (dimension, value) DO UPDATE SET n = terminal_counts.n + 1;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER terminals_counted_insert_delete AFTER INSERT OR DELETE ON terminals
    FOR EACH ROW EXECUTE FUNCTION terminal_counts_track();
-- Most updates (a new active certificate, a timestamp) change no counted column.
CREATE TRIGGER terminals_counted_update AFTER UPDATE ON terminals
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.class IS DISTINCT FROM NEW.class
          OR OLD.manufacturer IS DISTINCT FROM NEW.manufacturer)
    EXECUTE FUNCTION terminal_counts_track();

CREATE INDEX terminals_state ON terminals (state, serial);
CREATE INDEX terminals_class ON terminals (class, serial);
-- The console's usual pairing: a maker's terminals in one state.
CREATE INDEX terminals_manufacturer_state ON terminals (manufacturer, state, serial);
