"""An OpenAI-compatible API (completions, chat, embeddings) in front of a Triton server."""

from .app import GatewayConfig, create_app
from .server import GatewayThread, ensure_port_free, run_gateway

__all__ = ["GatewayConfig", "GatewayThread", "create_app", "ensure_port_free", "run_gateway"]
