"""The use-case layer: every front end (CLI, server) calls only this.

Open an ``Authority`` on a CA home once, then call one method per use case with a typed
request from ``service.requests``; results are typed too. Nothing here imports Typer or
Rich or reads the environment: front ends resolve flags, secrets and terminals first.
"""
