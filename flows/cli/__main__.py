"""`python -m flows.cli`, as the installed `demographics` command."""

from flows.cli import main

main()
