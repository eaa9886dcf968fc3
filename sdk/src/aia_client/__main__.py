"""`python -m aia_client`: the command line."""

from aia_client.cli import run

run()
