"""`panelfuse` command line. The app and its commands live in the submodules (root.py registers them);
`app` and `main` are exported here for the `panelfuse` script, `python -m panelfuse.cli` and tests."""

from panelfuse.cli.root import app, main

__all__ = ["app", "main"]
