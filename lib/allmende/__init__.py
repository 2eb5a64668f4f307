"""allmende: the federation kernel shared by the node, the gateway and the CLI."""

from allmende.errors import AllmendeError

__all__ = ["AllmendeError"]
__version__ = "0.1.0"
