"""`python -m qkvlab ...`: the CLI without the console script (a checkout on PYTHONPATH)."""

from qkvlab.cli import main

main()
