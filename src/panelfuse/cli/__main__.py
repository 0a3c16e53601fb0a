"""`python -m panelfuse.cli`: the same command as `panelfuse`."""

from panelfuse.cli import main

main()
