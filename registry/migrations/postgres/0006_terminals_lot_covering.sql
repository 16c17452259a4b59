-- Registry schema, version 6: a lot's page of terminals read from one index alone. The terminals
-- of a lot can lie anywhere in the table (registered at different times), so with the plain
-- (lot, serial) index each row of a page cost one random heap read (12 ms p99 for 50 rows at 10M
-- terminals, cold). Carrying the record in the index leaf makes the page an index-only scan: a
-- few adjacent leaf pages (heap reads only for pages not yet all-visible, until autovacuum).
-- Cost: the record once more per terminal (≈ 0.2 GB per million). Built without CONCURRENTLY
-- (migrations run in a transaction): on a large registry run it in a maintenance window.
CREATE INDEX terminals_lot_page ON terminals (lot, serial) INCLUDE (record);
DROP INDEX terminals_lot;
