-- Registry schema, version 8: the activation log. Every activation gets a registry-wide number
-- in commit order (counter 'activation_seq', advanced in the activation's transaction under the
-- audit lock, so numbers commit in order), and readers such as the fleet service page through
-- activations after the last number they saw (one index range walk, whatever the table's size).
ALTER TABLE activations ADD COLUMN seq bigint;
-- Older activations are numbered in the order they were made.
UPDATE activations a SET seq = o.seq
FROM (SELECT terminal, n,
             row_number() OVER (ORDER BY (convert_from(record, 'UTF8')::jsonb ->> 'at_ms')::bigint, terminal, n) AS seq
      FROM activations) o
WHERE a.terminal = o.terminal AND a.n = o.n;
ALTER TABLE activations ALTER COLUMN seq SET NOT NULL;
CREATE UNIQUE INDEX activations_by_seq ON activations (seq);
INSERT INTO counters (name, value) SELECT 'activation_seq', count(*) FROM activations
ON CONFLICT (name) DO UPDATE SET value = excluded.value;
