"""The allmende gateway: mutual-TLS gRPC, the owner's policy enforced before any row leaves."""

from allmende_gateway.server import Gateway, GatewayThread, load_policy

__all__ = ["Gateway", "GatewayThread", "load_policy"]
