-- Renewal chains and per-target event look-ups stay index-backed on large ledgers.
CREATE INDEX certificates_replaces ON certificates (replaces_id);
CREATE INDEX certificates_fingerprint_status ON certificates (status, profile);
CREATE INDEX events_target ON events (target);
