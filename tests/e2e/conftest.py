# The shared gateway fixture lives in tests/conftest.py (the e2e and fault tests use the same process).
from tests.gateway import Gateway, start_gateway, stop_gateway

__all__ = ["Gateway", "start_gateway", "stop_gateway"]
