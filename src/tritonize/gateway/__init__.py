"""An OpenAI-compatible API (completions, chat, embeddings) in front of a Triton server."""

from tritonize.server.local import ensure_port_free

from .app import GatewayConfig, create_app
from .server import GatewayThread, run_gateway

__all__ = ["GatewayConfig", "GatewayThread", "create_app", "ensure_port_free", "run_gateway"]
