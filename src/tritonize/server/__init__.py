"""The local tritonserver: the binary bundled in the `nvidia-pytriton` wheel."""

from tritonize.server.local import LocalServer, ServerConfig

__all__ = ["LocalServer", "ServerConfig"]
