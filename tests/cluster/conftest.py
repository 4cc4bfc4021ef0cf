"""A real Redis Cluster (3 masters, 1 replica each, 500 ms node timeout) for the cluster tests.

Run them alone with `pytest tests/cluster` or `-m cluster`. `cluster` is shared by the tests that
leave the topology as they found it; `own_cluster` is a fresh one for a test that reshards or kills
a node.
"""
from __future__ import annotations

import pytest
import pytest_asyncio

from tollgate.local_services import LocalCluster, start_cluster
from tollgate.redis_client import connect


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: needs a Redis Cluster of its own (redis-server, redis-cli)")


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/cluster/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster():
    c = start_cluster(masters=3, replicas=1)
    yield c
    c.stop()


@pytest.fixture
def own_cluster():
    c = start_cluster(masters=3, replicas=1)
    yield c
    c.stop()


@pytest_asyncio.fixture
async def cluster_redis(cluster: LocalCluster):
    """A redis-py RedisCluster client on the shared cluster (what the services open)."""
    client = connect(cluster.url, cluster=True)
    await client.initialize()
    yield client
    await client.aclose()
