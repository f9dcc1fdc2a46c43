-- The first schema. Times are RFC 3339 UTC strings ("2026-11-29T05:00:00Z"): they sort
-- lexicographically and stay portable to PostgreSQL.
CREATE TABLE authorities (
    id             INTEGER PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    role           TEXT NOT NULL CHECK (role IN ('root', 'intermediate')),
    parent_id      INTEGER REFERENCES authorities (id),
    ski            TEXT NOT NULL,
    subject        TEXT NOT NULL,
    key_uri        TEXT NOT NULL,
    key_storage    TEXT NOT NULL,
    key_algorithm  TEXT NOT NULL,
    key_generated_in TEXT NOT NULL,
    key_attributes TEXT NOT NULL DEFAULT '{}',
    trust_domain   TEXT,
    certificate_id INTEGER,  -- the CA's own certificate row, set in the same transaction
    created_at     TEXT NOT NULL
);

CREATE TABLE certificates (
    id             INTEGER PRIMARY KEY,
    serial         TEXT NOT NULL,
    issuer_ski     TEXT NOT NULL,
    authority_id   INTEGER REFERENCES authorities (id),
    fingerprint    TEXT NOT NULL UNIQUE,
    subject        TEXT NOT NULL,
    sans           TEXT NOT NULL,
    spiffe_id      TEXT,
    workflow       TEXT,
    permissions    TEXT,
    profile        TEXT NOT NULL,
    key_algorithm  TEXT NOT NULL,
    signature_algorithm TEXT NOT NULL,
    is_ca          INTEGER NOT NULL,
    not_before     TEXT NOT NULL,
    not_after      TEXT NOT NULL,
    status         TEXT NOT NULL DEFAULT 'valid'
                   CHECK (status IN ('valid', 'revoked', 'superseded')),
    replaces_id    INTEGER REFERENCES certificates (id),
    requester      TEXT,
    key_storage    TEXT,
    issued_at      TEXT NOT NULL,
    pem            TEXT NOT NULL,
    UNIQUE (issuer_ski, serial)
);
CREATE INDEX certificates_serial ON certificates (serial);
CREATE INDEX certificates_status_not_after ON certificates (status, not_after);
CREATE INDEX certificates_not_after ON certificates (not_after);
CREATE INDEX certificates_workflow ON certificates (workflow);
CREATE INDEX certificates_spiffe ON certificates (spiffe_id);
CREATE INDEX certificates_profile ON certificates (profile);
CREATE INDEX certificates_authority ON certificates (authority_id);
CREATE INDEX certificates_issued_at ON certificates (issued_at);

CREATE TABLE revocations (
    certificate_id INTEGER PRIMARY KEY REFERENCES certificates (id),
    revoked_at     TEXT NOT NULL,
    reason         TEXT
);

CREATE TABLE crls (
    id            INTEGER PRIMARY KEY,
    authority_id  INTEGER NOT NULL REFERENCES authorities (id),
    number        INTEGER NOT NULL,
    this_update   TEXT NOT NULL,
    next_update   TEXT NOT NULL,
    pem           TEXT,
    UNIQUE (authority_id, number)
);

CREATE TABLE events (
    seq          INTEGER PRIMARY KEY,
    at           TEXT NOT NULL,
    type         TEXT NOT NULL,
    actor        TEXT NOT NULL,
    host         TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    target       TEXT,
    params_hash  TEXT NOT NULL,
    details      TEXT NOT NULL,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL UNIQUE
);
CREATE INDEX events_at ON events (at);
CREATE INDEX events_type ON events (type);

CREATE TABLE checkpoints (
    id          INTEGER PRIMARY KEY,
    seq         INTEGER NOT NULL,
    head_hash   TEXT NOT NULL,
    at          TEXT NOT NULL,
    authority   TEXT NOT NULL,
    document    TEXT NOT NULL  -- the signed checkpoint JSON, as handed out
);
