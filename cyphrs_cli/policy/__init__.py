"""Issuance policy: whether a request fits its profile and its issuer, and by which rule."""
