"""quaylock: an OCI container registry that defends itself."""

__version__ = "0.1.0"
