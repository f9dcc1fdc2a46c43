"""ACME (RFC 8555) over HTTP inside ``cyphrs serve``: the ``/acme/...`` routes, JWS
verification (``server.acme.jws``) and replay nonces. The use cases are in
``cyphrs_cli.service.acme``."""
