-- Registry schema, version 1. Records are stored as the same JSON the redb backend keeps
-- (`record`), beside the columns the invariants and queries need. The invariants live here, as
-- constraints, whatever a process checks before writing.

CREATE TABLE terminals (
    serial       text PRIMARY KEY,
    class        text NOT NULL,
    manufacturer text NOT NULL,
    model        text NOT NULL,
    lot          text,
    state        text NOT NULL,
    active_cert  text UNIQUE,
    record       bytea NOT NULL
);
CREATE INDEX terminals_manufacturer ON terminals (manufacturer, serial);
CREATE INDEX terminals_lot ON terminals (lot, serial);

-- status: good | hold | revoked. A certificate on hold is still its terminal's certificate.
CREATE TABLE certs (
    serial          text PRIMARY KEY,
    terminal        text,
    key_fingerprint text NOT NULL,
    status          text NOT NULL CHECK (status IN ('good', 'hold', 'revoked')),
    record          bytea NOT NULL,
    der             bytea NOT NULL
);
-- One active certificate per terminal.
CREATE UNIQUE INDEX certs_one_active_per_terminal ON certs (terminal)
    WHERE terminal IS NOT NULL AND status <> 'revoked';

-- A key (SM3 of its SPKI) is certified for one terminal, ever.
CREATE TABLE pubkeys (
    fingerprint text PRIMARY KEY,
    terminal    text NOT NULL
);

CREATE TABLE compromised_keys (
    fingerprint text PRIMARY KEY,
    cert        text NOT NULL
);

-- One result per request id.
CREATE TABLE requests (
    id     text PRIMARY KEY,
    record bytea NOT NULL
);

CREATE TABLE principals (
    name   text PRIMARY KEY,
    record bytea NOT NULL
);

CREATE TABLE approvals (
    id         text PRIMARY KEY,
    created_ms bigint NOT NULL,
    record     bytea NOT NULL
);

CREATE TABLE activations (
    terminal text NOT NULL,
    n        bigint NOT NULL,
    record   bytea NOT NULL,
    PRIMARY KEY (terminal, n)
);

-- Shared by every instance: a nonce used on one is refused on all.
CREATE TABLE nonces (
    nonce      bytea PRIMARY KEY,
    expires_ms bigint NOT NULL
);
CREATE INDEX nonces_expiry ON nonces (expires_ms);

-- Durable counters (CRL numbers, issuance ordinals, revocation commit order): advanced by
-- UPDATE … RETURNING in the writing transaction, so blocks are consecutive and never reused.
CREATE TABLE counters (
    name  text PRIMARY KEY,
    value bigint NOT NULL CHECK (value >= 0)
);
INSERT INTO counters (name, value) VALUES ('revocation_seq', 0), ('crl_number', 0), ('ordinal_high_water', 0);

CREATE TABLE revoked (
    serial text PRIMARY KEY,
    record bytea NOT NULL
);

CREATE TABLE released (
    serial text PRIMARY KEY,
    record bytea NOT NULL
);

-- One SM3 chain for all instances: writers hold the audit advisory lock, the key is unique.
CREATE TABLE audit (
    seq   bigint PRIMARY KEY CHECK (seq > 0),
    entry bytea NOT NULL
);

CREATE TABLE audit_checkpoints (
    seq        bigint PRIMARY KEY,
    checkpoint bytea NOT NULL
);
