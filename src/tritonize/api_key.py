"""The header that carries the server's API key: shared by the server and its clients.

A module of its own so that a client does not import the server (and the build layer) for it.
"""

# gRPC clients send it as `triton-grpc-protocol-tritonize-key`.
API_KEY_HEADER = "tritonize-key"
