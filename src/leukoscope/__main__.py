"""``python -m leukoscope`` runs the CLI."""

from leukoscope.cli import main

main()
