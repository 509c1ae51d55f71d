"""A service the integration tests need skips them where it is missing, and fails them under
FLYWHEEL_REQUIRE_SERVICES=1 (CI), naming the service."""

import pytest

from tests.conftest import free_port
from tests.integration.conftest import _require


def test_a_missing_service_skips_by_default(monkeypatch):
    monkeypatch.delenv("FLYWHEEL_REQUIRE_SERVICES", raising=False)
    port = free_port()  # nothing listens there
    with pytest.raises(pytest.skip.Exception, match=f"Redis is not reachable at redis://127.0.0.1:{port}/0"):
        _require(f"redis://127.0.0.1:{port}/0", 6379, "Redis")


def test_a_missing_service_fails_when_required(monkeypatch):
    monkeypatch.setenv("FLYWHEEL_REQUIRE_SERVICES", "1")
    port = free_port()
    with pytest.raises(pytest.fail.Exception, match="PostgreSQL is not reachable .* requires it"):
        _require(f"postgresql+psycopg2://postgres@127.0.0.1:{port}", 5432, "PostgreSQL")
