"""panelfuse: an open, self-hosted Fusion API."""

__version__ = "0.1.0"
