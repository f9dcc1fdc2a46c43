"""cyphrs: a private certificate authority for short-lived mTLS identities."""

# Static on purpose: importlib.metadata costs start-up time on every invocation.
__version__ = "0.1.0"
