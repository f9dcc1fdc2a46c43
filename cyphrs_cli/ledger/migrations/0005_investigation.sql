-- Incident reconstruction (issue 13): point-in-time listings, look-ups by any handle and
-- per-identity timelines stay index-backed on a ledger of millions of rows.
-- Validity at an instant: scan (not_after >= T) and test issued_at <= T inside the index.
CREATE INDEX certificates_validity ON certificates (not_after, issued_at);
-- A workflow's certificates in issue order (timeline --workflow, list --workflow).
CREATE INDEX certificates_workflow_issued ON certificates (workflow, issued_at);
-- One certificate's (or authority's) events in a window.
CREATE INDEX events_target_at ON events (target, at);
-- Events that name a SPIFFE ID in their details (issuance, policy denials, and any later
-- event type that carries one), in a window. json_valid first: a details column that is
-- not JSON (a damaged or tampered row) must stay writable and readable, never an error.
CREATE INDEX events_spiffe_at ON events ((CASE WHEN json_valid(details) THEN json_extract(details, '$.spiffe_id') END), at);
-- SHA-1 fingerprints, for the logs that still print them: the ledger keys certificates by
-- SHA-256. Filled at insertion (ledger.records) and, for older rows, right after this
-- migration (ledger.db). No foreign key: a deleted certificate row is audit verify's
-- finding, not a second one here; look-ups recompute the hash from the row's PEM.
CREATE TABLE certificate_sha1 (
    certificate_id INTEGER PRIMARY KEY,
    sha1           TEXT NOT NULL
);
CREATE INDEX certificate_sha1_sha1 ON certificate_sha1 (sha1)
