-- ``list --san`` as an index lookup instead of a LIKE scan of every row's JSON.
-- ``certificate_sans`` is derived from ``certificates.sans`` (which each row's
-- ``row_digest`` covers): one row per SAN value, the text after the type prefix
-- ("DNS:", "IP:", "URI:" ...), ASCII-lowercased as LIKE compared it. Triggers keep it in
-- the same transaction as the certificate row on every write path; ``audit verify``
-- recomputes it from ``certificates`` and reports any difference. No foreign key: a
-- deleted certificate row takes its entries with it (trigger), and a stray entry is a
-- verify finding, not a failed write.
CREATE TABLE certificate_sans (
    name           TEXT NOT NULL,
    certificate_id INTEGER NOT NULL,
    PRIMARY KEY (name, certificate_id)
) WITHOUT ROWID;
CREATE INDEX certificate_sans_certificate ON certificate_sans (certificate_id);
CREATE TRIGGER certificate_sans_insert AFTER INSERT ON certificates BEGIN INSERT OR IGNORE INTO certificate_sans (name, certificate_id) SELECT lower(substr(value, instr(value, ':') + 1)), NEW.id FROM json_each(CASE WHEN json_valid(NEW.sans) THEN NEW.sans ELSE '[]' END) WHERE type = 'text';  END;
CREATE TRIGGER certificate_sans_delete AFTER DELETE ON certificates BEGIN DELETE FROM certificate_sans WHERE certificate_id = OLD.id;  END;
CREATE TRIGGER certificate_sans_update AFTER UPDATE OF id, sans ON certificates BEGIN DELETE FROM certificate_sans WHERE certificate_id = OLD.id;  INSERT OR IGNORE INTO certificate_sans (name, certificate_id) SELECT lower(substr(value, instr(value, ':') + 1)), NEW.id FROM json_each(CASE WHEN json_valid(NEW.sans) THEN NEW.sans ELSE '[]' END) WHERE type = 'text';  END;
INSERT OR IGNORE INTO certificate_sans (name, certificate_id) SELECT lower(substr(j.value, instr(j.value, ':') + 1)), c.id FROM certificates c, json_each(CASE WHEN json_valid(c.sans) THEN c.sans ELSE '[]' END) j WHERE j.type = 'text';
