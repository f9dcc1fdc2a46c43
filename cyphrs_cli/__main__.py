"""Allow ``python -m cyphrs_cli``."""

from cyphrs_cli.cli.app import main

main()
