-- ACME authorization reuse (RFC 8555 §7.1.4) looks up an account's valid authorization for
-- one identifier; expired orders are swept by account. Indexes only: no data changes.
CREATE INDEX acme_authorizations_reuse
    ON acme_authorizations (account_id, identifier_type, identifier, status);
CREATE INDEX acme_orders_status ON acme_orders (status, expires_at);
