"""Health checks of a CA home (``cyphrs doctor``): one module per family of checks.

Each family is a function ``check(context) -> list[Finding]`` over a read-only
``CheckContext``; ``service.doctor`` runs them all. Nothing here writes to the home,
unlocks a key or imports typer/rich.
"""
