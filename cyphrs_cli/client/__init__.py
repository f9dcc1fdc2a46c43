"""The agent side of ``cyphrs serve``: what runs on an agent's machine, not on the CA host.

- ``api``: the HTTPS JSON client of the ``/v1`` API (stdlib ``http.client`` and ``ssl``
  only, trusting only the given root); problem+json errors come back as ``CyphrsError``s.
- ``credentials``: a key generated locally, its CSR, and the checks of what the CA
  returned (the certificate carries our key, chains to our root, keeps its identity).
- ``files``: the agent's directory (key.pem, cert.pem, chain.pem, fullchain.pem, ca.pem)
  and its crash-safe swap on renewal.
- ``schedule``: when to renew and how long to back off (pure functions, tested alone).
- ``agent``: the use cases ``enroll``, ``renew_once`` and ``run_daemon``.
- ``tls``: for services that verify agents: reloading ``ssl.SSLContext`` factories and
  ``check_peer`` (SPIFFE ID and agent claims).

Nothing here needs a CA home, the ledger or a server extra.
"""
