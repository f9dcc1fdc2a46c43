-- ACME (RFC 8555) in `cyphrs serve`: External Account Binding keys, accounts, orders,
-- authorizations and challenges. Orders and authorizations live here so that they survive
-- a restart; issued certificates are ordinary `certificates` rows (the one issuance path).
CREATE TABLE acme_eab_keys (
    kid             TEXT PRIMARY KEY,       -- "eab_<hex>", public
    hmac_key        TEXT NOT NULL,          -- base64url; HMAC verification needs the key itself
    key_sha256      TEXT NOT NULL,          -- fingerprint shown by `acme eab list`
    profile         TEXT NOT NULL,
    dns_patterns    TEXT NOT NULL,          -- JSON array of names / "*.<suffix>" patterns
    ip_networks     TEXT NOT NULL,          -- JSON array of CIDR networks
    created_at      TEXT NOT NULL,
    expires_at      TEXT,
    revoked_at      TEXT,
    account_id      TEXT UNIQUE             -- the one account it bound (single use)
);

CREATE TABLE acme_accounts (
    account_id      TEXT PRIMARY KEY,       -- "acct_<hex>"
    jwk_thumbprint  TEXT NOT NULL UNIQUE,   -- RFC 7638 SHA-256 thumbprint of the account key
    jwk             TEXT NOT NULL,          -- the public JWK (JSON)
    status          TEXT NOT NULL CHECK (status IN ('valid', 'deactivated', 'revoked')),
    contact         TEXT NOT NULL,          -- JSON array
    eab_kid         TEXT REFERENCES acme_eab_keys (kid),
    created_at      TEXT NOT NULL
);

CREATE TABLE acme_orders (
    order_id        TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL REFERENCES acme_accounts (account_id),
    status          TEXT NOT NULL
                    CHECK (status IN ('pending', 'ready', 'processing', 'valid', 'invalid')),
    identifiers     TEXT NOT NULL,          -- JSON array of {"type","value"}
    profile         TEXT NOT NULL,
    expires_at      TEXT NOT NULL,
    error           TEXT,                   -- JSON problem document
    certificate_serial TEXT,
    certificate_pem TEXT,                   -- leaf + intermediates
    created_at      TEXT NOT NULL
);
CREATE INDEX acme_orders_account ON acme_orders (account_id);
CREATE INDEX acme_orders_serial ON acme_orders (certificate_serial);

CREATE TABLE acme_authorizations (
    authz_id        TEXT PRIMARY KEY,
    order_id        TEXT NOT NULL REFERENCES acme_orders (order_id),
    account_id      TEXT NOT NULL REFERENCES acme_accounts (account_id),
    identifier_type TEXT NOT NULL CHECK (identifier_type IN ('dns', 'ip')),
    identifier      TEXT NOT NULL,
    wildcard        INTEGER NOT NULL DEFAULT 0,
    status          TEXT NOT NULL
                    CHECK (status IN ('pending', 'valid', 'invalid', 'deactivated', 'expired',
                                      'revoked')),
    expires_at      TEXT NOT NULL
);
CREATE INDEX acme_authorizations_order ON acme_authorizations (order_id);

CREATE TABLE acme_challenges (
    challenge_id    TEXT PRIMARY KEY,
    authz_id        TEXT NOT NULL REFERENCES acme_authorizations (authz_id),
    type            TEXT NOT NULL CHECK (type IN ('http-01', 'dns-01', 'tls-alpn-01')),
    token           TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'valid', 'invalid')),
    validated_at    TEXT,
    error           TEXT
);
CREATE INDEX acme_challenges_authz ON acme_challenges (authz_id);
