"""quaylock: an OCI container registry that defends itself."""

import importlib.metadata

try:
    # pyproject.toml holds the one version; the installed metadata has it.
    __version__ = importlib.metadata.version("quaylock")
except importlib.metadata.PackageNotFoundError:  # run from a bare source tree
    __version__ = "0+unknown"
