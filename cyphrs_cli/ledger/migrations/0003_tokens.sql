-- Enrollment: one-time tokens (stored as SHA-256 only), JWT provisioners (trust state,
-- anchored by hash-chained events) and the JWT uses that make a bearer credential one-time.
CREATE TABLE tokens (
    id              INTEGER PRIMARY KEY,
    token_id        TEXT NOT NULL UNIQUE,   -- public handle ("tok_<hex>"), never the secret
    secret_sha256   TEXT NOT NULL UNIQUE,   -- SHA-256 (hex) of the token string
    profile         TEXT NOT NULL,
    workflow        TEXT,
    permissions     TEXT NOT NULL,          -- JSON array
    trust_domain    TEXT,
    max_ttl_seconds INTEGER,
    uses_allowed    INTEGER NOT NULL CHECK (uses_allowed >= 1),
    uses            INTEGER NOT NULL DEFAULT 0 CHECK (uses >= 0 AND uses <= uses_allowed),
    requester       TEXT,
    created_at      TEXT NOT NULL,
    expires_at      TEXT NOT NULL,
    revoked_at      TEXT
);
CREATE INDEX tokens_expires_at ON tokens (expires_at);

CREATE TABLE provisioners (
    name            TEXT PRIMARY KEY,
    config          TEXT NOT NULL,          -- canonical JSON of the provisioner
    config_sha256   TEXT NOT NULL,
    recorded_at     TEXT NOT NULL
);

CREATE TABLE jwt_uses (
    provisioner     TEXT NOT NULL,
    jti             TEXT NOT NULL,          -- the JWT's jti, or "sha256:<hex>" of the JWT
    expires_at      TEXT NOT NULL,
    serial          TEXT NOT NULL,
    used_at         TEXT NOT NULL,
    PRIMARY KEY (provisioner, jti)
);
