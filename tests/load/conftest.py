"""The load group: the e2e group's server and namespace rule (see `tests/e2e/conftest.py`)."""

from tests.e2e.conftest import _in_test_namespace, livekit_server

__all__ = ["_in_test_namespace", "livekit_server"]
