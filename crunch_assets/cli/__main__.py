"""python -m crunch_assets.cli: the crunch-dagster command line."""

from crunch_assets.cli import main

main()
