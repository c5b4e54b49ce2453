"""The shared circuit breaker (against the test Redis) and retries with backoff and jitter."""

import asyncio
import secrets
import time

import pytest
from django.conf import settings

from agentapi.resilience import Breaker, BreakerOpen, SharedRedis, retry_async


def run(coroutine):
    return asyncio.run(coroutine)


def breakers(count=2, **options):
    """`count` breakers with one name, as if in `count` processes (each with its own Redis client)."""
    name = f"test:{secrets.token_hex(4)}"
    return [Breaker(name, SharedRedis(settings.REDIS_URL), **options) for _ in range(count)]


def test_it_opens_after_fail_max_and_every_holder_sees_it():
    async def scenario():
        first, second = breakers(fail_max=3, reset_timeout=30, sync_interval=0)
        for _ in range(3):
            await first.before_call()
            await first.failure()
        with pytest.raises(BreakerOpen) as opened:
            await first.before_call()
        with pytest.raises(BreakerOpen):
            await second.before_call()
        return opened.value.retry_after

    assert 28 <= run(scenario()) <= 30


def test_failures_from_several_holders_add_up():
    async def scenario():
        first, second = breakers(fail_max=2, sync_interval=0)
        await first.failure()
        await second.failure()
        with pytest.raises(BreakerOpen):
            await first.before_call()

    run(scenario())


def test_a_success_resets_the_count():
    async def scenario():
        (breaker,) = breakers(1, fail_max=2, sync_interval=0)
        await breaker.failure()
        await breaker.success()
        await breaker.failure()
        await breaker.before_call()  # one failure since the success: still closed

    run(scenario())


def test_after_the_reset_timeout_exactly_one_holder_probes():
    async def scenario():
        first, second = breakers(fail_max=1, reset_timeout=0.3, sync_interval=0)
        await first.failure()
        await asyncio.sleep(0.35)
        await first.before_call()  # the probe
        with pytest.raises(BreakerOpen):
            await second.before_call()  # not a second one
        await first.success()
        await second.before_call()  # closed for everyone

    run(scenario())


def test_a_failed_probe_opens_it_again():
    async def scenario():
        (breaker,) = breakers(1, fail_max=1, reset_timeout=0.3, sync_interval=0)
        await breaker.failure()
        await asyncio.sleep(0.35)
        await breaker.before_call()
        await breaker.failure()
        with pytest.raises(BreakerOpen):
            await breaker.before_call()

    run(scenario())


def test_without_redis_it_works_locally_and_does_not_wait_on_redis():
    async def scenario():
        breaker = Breaker(f"test:{secrets.token_hex(4)}", SharedRedis("redis://127.0.0.1:9/0"), fail_max=2)
        started = time.perf_counter()
        await breaker.before_call()
        for _ in range(2):
            await breaker.failure()
        with pytest.raises(BreakerOpen):
            await breaker.before_call()
        return time.perf_counter() - started

    assert run(scenario()) < 1.0  # one failed connection attempt, then Redis is skipped


def test_retries_back_off_with_jitter_and_stop_at_the_limit():
    attempts = []

    async def flaky():
        attempts.append(time.perf_counter())
        if len(attempts) < 3:
            raise ConnectionError("transient")
        return "ok"

    assert run(retry_async(flaky, attempts=3, retry_on=(ConnectionError,), base=0.05, cap=0.2)) == "ok"
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    assert len(attempts) == 3 and all(gap <= 0.3 for gap in gaps)

    async def always_failing():
        attempts.append(0)
        raise ConnectionError("down")

    attempts.clear()
    with pytest.raises(ConnectionError):
        run(retry_async(always_failing, attempts=3, retry_on=(ConnectionError,), base=0.01))
    assert len(attempts) == 3

    async def not_retried():
        attempts.append(0)
        raise ValueError("a bug, not a transient failure")

    attempts.clear()
    with pytest.raises(ValueError):
        run(retry_async(not_retried, attempts=3, retry_on=(ConnectionError,)))
    assert len(attempts) == 1
