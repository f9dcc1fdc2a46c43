-- Fewer index writes per certificate (issue 10, online enrollment cost). Each of these
-- indexes is a leading prefix of another index on the same table, so every query that
-- could use it can use the longer one, with the same equality/range on the same leading
-- column: certificates_not_after (not_after) of certificates_validity
-- (not_after, issued_at); certificates_workflow (workflow) of certificates_workflow_issued
-- (workflow, issued_at); events_target (target) of events_target_at (target, at).
-- Every certificate insert and every event append paid a B-tree write for each of them
-- (events_target a random page per event). IF EXISTS: a ledger rolled back to before a
-- later migration (tests do) may not have them.
DROP INDEX IF EXISTS certificates_not_after;
DROP INDEX IF EXISTS certificates_workflow;
DROP INDEX IF EXISTS events_target
