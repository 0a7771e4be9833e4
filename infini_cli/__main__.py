"""`python -m infini_cli`: the `infini` command."""

from .cli import main

main()
