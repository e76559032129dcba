"""The local tritonserver: the binary bundled in the `nvidia-pytriton` wheel."""

from tritonize.server.local import LocalServer, ServerConfig
from tritonize.server.supervisor import Supervisor

__all__ = ["LocalServer", "ServerConfig", "Supervisor"]
