-- ACME: authorization reuse (RFC 8555 §7.1.4) looks up an account's valid authorization for
-- one identifier, and expired orders are swept by status and expiry (indexes).
CREATE INDEX acme_authorizations_reuse
    ON acme_authorizations (account_id, identifier_type, identifier, status);
CREATE INDEX acme_orders_status ON acme_orders (status, expires_at);
-- ARI (RFC 9773 §5): the certificate a newOrder says it replaces (its ledger id, and the
-- identifier as the client sent it, echoed back in the order); the certificate issued for
-- the order is recorded as its renewal (certificates.replaces_id).
ALTER TABLE acme_orders ADD COLUMN replaces_certificate_id INTEGER REFERENCES certificates (id);
ALTER TABLE acme_orders ADD COLUMN replaces TEXT;
CREATE INDEX acme_orders_replaces ON acme_orders (replaces_certificate_id);
