"""``cyphrs serve``: the online CA over HTTPS (aiohttp). Front end only: it parses requests,
calls the use cases of ``cyphrs_cli.service`` and renders their results. Its dependencies
(aiohttp, prometheus-client, jsonschema) come with ``pip install 'cyphrs[server]'`` and are
imported only when a server runs (``server.spec`` and ``server.problems`` need none of them).
"""
