"""REDIS_URL forms: redis://, rediss:// and redis+sentinel://h1,h2/<service>."""

from __future__ import annotations

import pytest
from redis.asyncio.sentinel import SentinelConnectionPool

from bioagents.queue_mode.connect import connect, parse_sentinel_url

pytestmark = pytest.mark.queue


def test_a_sentinel_url_names_its_sentinels_service_and_credentials():
    sentinels, service, options = parse_sentinel_url(
        "redis+sentinel://:s3cret@10.0.0.1:26380,sentinel-b/mymaster/2?sentinel_password=x"
    )
    assert sentinels == [("10.0.0.1", 26380), ("sentinel-b", 26379)]
    assert service == "mymaster"
    assert options == {"db": 2, "password": "s3cret", "sentinel_password": "x"}


async def test_clients_for_each_url_form_connect_lazily():
    sentinel = connect("redis+sentinel://h1:26379,h2:26379/mymaster")
    assert isinstance(sentinel.connection_pool, SentinelConnectionPool)
    secure = connect("rediss://:pw@cache.example:6380/1")
    assert secure.connection_pool.connection_kwargs["port"] == 6380
    blocking = connect("redis://127.0.0.1:6379", "blocking")
    assert blocking.connection_pool.connection_kwargs["socket_timeout"] is None
    for client in (sentinel, secure, blocking):
        await client.aclose()
