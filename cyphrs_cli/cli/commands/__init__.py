"""One module per command group; each imports only typer, stdlib and cyphrs_cli.cli at top."""
