-- Registry schema, version 2: activation challenges (proof-of-presence activation). A challenge
-- is handed out once, used once (deleted in the transaction that records the activation) and
-- refused after expires_ms. Shared by every instance, like nonces.
CREATE TABLE activation_challenges (
    challenge  bytea PRIMARY KEY,
    expires_ms bigint NOT NULL,
    record     bytea NOT NULL
);
CREATE INDEX activation_challenges_expiry ON activation_challenges (expires_ms);
