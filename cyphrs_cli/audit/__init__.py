"""Audit evidence: signed checkpoints of the ledger and export bundles for reviewers."""
