"""Fixtures of the load tests: the scale factor, hosts that are always closed, a throwaway PostgreSQL cluster.

Scale: ``PLUGIN_POOL_LOAD_SCALE`` (a multiplier, default 1) or ``--load-scale`` (which wins; it is known to
pytest when tests/load is named on the command line, e.g. ``pytest tests/load --load-scale 10``). At 1 the
whole directory runs in about 20 s on 2 cores with ``-n 2``; a larger scale multiplies the calls and the
chaos durations (not the deadlines).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _hosts import closed_after
from _load_helpers import PostgresCluster, new_host

from plugin_pool import PluginHost

SCALE_VARIABLE = "PLUGIN_POOL_LOAD_SCALE"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--load-scale",
        type=float,
        default=None,
        help=f"multiply the calls and durations of tests/load (default: ${SCALE_VARIABLE} or 1)",
    )


@pytest.fixture(scope="session")
def load_scale(pytestconfig: pytest.Config) -> float:
    """The load multiplier: --load-scale, else $PLUGIN_POOL_LOAD_SCALE, else 1."""
    option = pytestconfig.getoption("load_scale", default=None)
    raw: Any = option if option is not None else os.environ.get(SCALE_VARIABLE, "1")
    try:
        scale = float(raw)
    except ValueError:
        raise pytest.UsageError(
            f"{SCALE_VARIABLE}={raw!r} is not a number (a multiplier such as 1, 0.5 or 10)"
        ) from None
    if not scale > 0:
        raise pytest.UsageError(f"the load scale must be > 0, got {scale}")
    return scale


@pytest.fixture
def open_host() -> Iterator[Callable[..., PluginHost]]:
    """``open_host(config=None, **sandbox)``: an open host; every one is closed after the test (idempotent, so
    a test may close it itself first to check for leaks)."""
    yield from closed_after(new_host)


@pytest.fixture
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL cluster of this test alone, started (initdb + pg_ctl as the ``postgres`` user when
    run as root), on a free 127.0.0.1 port; stopped and removed afterwards. Skips without PostgreSQL binaries,
    fails instead when ``CI`` is set."""
    problem = PostgresCluster.find_problem()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"a throwaway PostgreSQL cluster is required under CI: {problem}")
        pytest.skip(f"no throwaway PostgreSQL cluster: {problem}")
    cluster = PostgresCluster()
    try:
        cluster.create()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
