"""Session fixtures for integration tests: a private Kafka + Redis stack on free ports, torn down at the end."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.ops import stack as stack_mod
from tests.integration import scenario
from tests.integration.scenario import Env

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark everything under tests/integration, so `-m "not integration"` gives the fast unit run."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack_mod.RunningStack]:
    """A real broker and redis-server for this session only; a start failure fails the tests, never skips them."""
    with contextlib.ExitStack() as cleanup:
        problem = ""
        try:
            running = cleanup.enter_context(stack_mod.isolated_stack(tmp_path_factory.mktemp("stack"), partitions=4))
        except stack_mod.StackError as e:
            problem = str(e)
        if problem:
            pytest.fail(f"the integration stack did not start: {problem}", pytrace=False)
        yield running


@pytest.fixture
def pipe(stack: Any, tmp_path: Path) -> Iterator[Env]:
    """Empty topics, an empty Redis db and a new consumer group for each test."""
    yield scenario.fresh_env(stack, tmp_path, "test")
    shutil.rmtree(tmp_path / "var", ignore_errors=True)


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Three primaries, no replicas, slots spread by redis-cli --cluster create; a start failure fails the tests."""
    with stack_mod.redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as url:
        yield url


@pytest.fixture
def cpipe(stack: Any, cluster_url: str, tmp_path: Path) -> Iterator[Env]:
    """A fresh pipeline whose FENXIAO_REDIS_URL is the cluster."""
    yield scenario.fresh_env(stack_mod.ClusterStack(stack, cluster_url), tmp_path, "cluster")
    shutil.rmtree(tmp_path / "var", ignore_errors=True)
