"""Admission to an ingress replica: `max_ongoing_requests` served at once, `max_queued_requests` waiting, the rest
refused at once."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("fastapi")

from serving.ingress import Admission, Once  # noqa: E402


async def fill(admission: Admission, n: int) -> list[asyncio.Task]:
    tasks = [asyncio.create_task(admission.enter()) for _ in range(n)]
    await asyncio.sleep(0)  # let each task reach the semaphore
    return tasks


def test_requests_past_ongoing_and_queued_are_refused_and_a_leave_admits_the_next():
    async def scenario():
        admission = Admission(ongoing=2, queued=1)
        tasks = await fill(admission, 3)
        assert [t.done() for t in tasks] == [True, True, False]  # two in, one waiting
        assert await admission.enter() is False  # the queue is full: refused, not queued
        admission.leave()
        assert await tasks[2] is True  # the waiting one got the freed slot
        assert admission.waiting == 0

    asyncio.run(scenario())


def test_an_unbounded_queue_never_refuses():
    async def scenario():
        admission = Admission(ongoing=1, queued=-1)
        tasks = await fill(admission, 50)
        assert sum(t.done() for t in tasks) == 1 and admission.waiting == 49
        for t in tasks:
            t.cancel()

    asyncio.run(scenario())


def test_a_waiter_that_is_cancelled_leaves_the_queue():
    async def scenario():
        admission = Admission(ongoing=1, queued=1)
        await admission.enter()
        waiter = asyncio.create_task(admission.enter())
        await asyncio.sleep(0)
        assert admission.waiting == 1
        waiter.cancel()
        await asyncio.sleep(0)
        assert admission.waiting == 0

    asyncio.run(scenario())


def test_once_runs_its_function_a_single_time():
    calls = []
    once = Once(lambda *args: calls.append(args))
    once(1)
    once(2)
    assert calls == [(1,)]
