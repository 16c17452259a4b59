-- Registry schema, version 5: the CRLs the CRL leader signed, for every instance to serve. One
-- row per CRL file ('full', 'delta', 'partition-N'); a row is replaced only by a higher CRL
-- number (numbers come from the shared counter), so a leader that lost its lock late cannot put
-- an older CRL back. The full CRL's row carries the delta base (its CRL number and the
-- revocation sequence it covers), so a new leader continues the same deltas.
CREATE TABLE published_crls (
    name           text    PRIMARY KEY,
    number         bigint  NOT NULL,
    der            bytea   NOT NULL,
    entries        integer NOT NULL,
    this_update_ms bigint  NOT NULL,
    base_number    bigint,
    base_seq       bigint
);
CREATE INDEX published_crls_by_number ON published_crls (number);
