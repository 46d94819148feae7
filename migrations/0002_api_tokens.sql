-- API tokens: only the SHA-256 of each token is stored. Idempotent, so the token store can also
-- apply it on a connection of its own.
CREATE TABLE IF NOT EXISTS api_tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'player')),
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL,
    revoked     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS api_tokens_user ON api_tokens (user);
