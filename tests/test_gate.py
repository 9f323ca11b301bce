"""The in-flight gate: a free place is taken synchronously; waiters are served in order;
no cancellation ever loses or duplicates a place."""

from __future__ import annotations

import asyncio

from kiemashup._gate import Gate


async def test_free_places_are_taken_without_waiting_and_counted() -> None:
    gate = Gate(2)
    assert gate.try_enter()
    assert gate.try_enter()
    assert not gate.try_enter()  # full
    gate.leave()
    assert gate.try_enter()


async def test_waiters_are_served_first_come_first_served() -> None:
    gate = Gate(1)
    assert gate.try_enter()
    order: list[int] = []

    async def take(i: int) -> None:
        await gate.enter()
        order.append(i)

    waiters = [asyncio.create_task(take(i)) for i in range(5)]
    await asyncio.sleep(0)  # all five are in line
    for _ in range(5):
        gate.leave()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2, 3, 4]
    assert not gate.try_enter()  # the last waiter still holds the one place


async def test_nobody_jumps_the_line_while_someone_waits() -> None:
    gate = Gate(1)
    assert gate.try_enter()
    waiter = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    gate.leave()  # handed to the waiter, not made free
    assert not gate.try_enter()
    await waiter
    gate.leave()
    assert gate.try_enter()


async def test_a_cancelled_waiter_takes_no_place() -> None:
    gate = Gate(1)
    assert gate.try_enter()
    waiter = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert waiter.cancelled()
    gate.leave()
    assert gate.try_enter()  # the place came back: the cancelled waiter did not keep it
    assert not gate.try_enter()


async def test_a_waiter_cancelled_just_after_being_handed_a_place_passes_it_on() -> None:
    gate = Gate(1)
    assert gate.try_enter()
    first = asyncio.create_task(gate.enter())
    second = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    gate.leave()  # the place goes to ``first``...
    first.cancel()  # ...which is cancelled before it runs again
    await asyncio.gather(first, return_exceptions=True)
    assert first.cancelled()
    await asyncio.wait_for(second, 1)  # ``second`` got the place ``first`` could not use
    assert not gate.try_enter()
    gate.leave()
    assert gate.try_enter()


async def test_many_tasks_never_exceed_the_size() -> None:
    gate = Gate(3)
    inside = 0
    most = 0

    async def work(i: int) -> None:
        nonlocal inside, most
        if not gate.try_enter():
            await gate.enter()
        try:
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.001 * (i % 3))
        finally:
            inside -= 1
            gate.leave()

    tasks = [asyncio.create_task(work(i)) for i in range(60)]
    for task in tasks[::7]:
        task.cancel()  # some leave early, some while waiting
    await asyncio.gather(*tasks, return_exceptions=True)
    assert most == 3
    assert inside == 0
    assert [gate.try_enter() for _ in range(4)] == [True, True, True, False]
