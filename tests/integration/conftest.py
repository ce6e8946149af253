"""Fixtures for integration tests that need a real database: one PostgreSQL server for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from steward_harness.postgres import Postgres

_STARTUP_KEY = pytest.StashKey[float]()


@pytest.fixture(scope="session")
def postgres(request: pytest.FixtureRequest) -> Iterator[str]:
    """A SQLAlchemy URL of a fresh database on a real PostgreSQL server, started once for the session on a
    free loopback port; its data and log are kept when any test failed."""
    server = Postgres()
    try:
        request.config.stash[_STARTUP_KEY] = server.start()
    except BaseException:
        server.stop(keep=True)
        raise
    yield server.url
    failed = request.session.testsfailed > 0
    server.stop(keep=failed)
    if failed:
        print(f"\nPostgreSQL data and log kept in {server.directory}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if _STARTUP_KEY in config.stash:
        terminalreporter.write_line(f"PostgreSQL started in {config.stash[_STARTUP_KEY]:.1f} s")
