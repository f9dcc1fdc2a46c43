"""The issuance ledger: SQLite by default, every change recorded with a hash-chained event."""
