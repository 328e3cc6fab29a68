import asyncio

import pytest
import redis.asyncio as aioredis

from signaling.rate_limit import RateLimitConfig, RateLimiter

pytestmark = pytest.mark.slow


@pytest.fixture
async def redis_client(embedded_redis):
    client = aioredis.from_url(embedded_redis.url, max_connections=200)
    yield client
    await client.aclose()


async def test_100_concurrent_takes_from_a_burst_of_10_without_refill_admit_exactly_10(redis_client):
    limiter = RateLimiter(redis_client, RateLimitConfig(per_ip_rate=0, per_ip_burst=10))
    decisions = await asyncio.gather(*(limiter.take("198.51.100.7") for _ in range(100)))
    assert sum(d.admitted for d in decisions) == 10
    refused = [d for d in decisions if not d.admitted]
    assert all(d.retry_after_s >= 1 for d in refused)


async def test_buckets_are_per_ip_and_refill_on_redis_time(redis_client):
    limiter = RateLimiter(redis_client, RateLimitConfig(per_ip_rate=10, per_ip_burst=2))
    assert [(await limiter.take("192.0.2.1")).admitted for _ in range(3)] == [True, True, False]
    assert (await limiter.take("192.0.2.2")).admitted  # another client has its own bucket
    refused = await limiter.take("192.0.2.1")
    assert not refused.admitted and refused.retry_after_s == 1
    await asyncio.sleep(0.15)  # 10 tokens a second: one is back
    assert (await limiter.take("192.0.2.1")).admitted


async def test_the_global_bucket_limits_everyone(redis_client):
    limiter = RateLimiter(redis_client, RateLimitConfig(global_rate=0, global_burst=3))
    results = [(await limiter.take(f"203.0.113.{i}")).admitted for i in range(5)]
    assert results == [True, True, True, False, False]


async def test_the_script_uses_redis_time_and_evalsha(redis_client):
    limiter = RateLimiter(redis_client, RateLimitConfig(per_ip_rate=1, per_ip_burst=5))
    await limiter.take("192.0.2.9")
    state = await redis_client.hgetall("rl:ip:192.0.2.9")
    redis_now = float("%d.%06d" % tuple(await redis_client.time()))
    assert abs(float(state[b"ts"]) - redis_now) < 2
    assert float(state[b"tokens"]) == 4
    assert 0 < await redis_client.ttl("rl:ip:192.0.2.9") <= 2
    info = await redis_client.info("commandstats")
    assert info.get("cmdstat_evalsha", {}).get("calls", 0) >= 1
