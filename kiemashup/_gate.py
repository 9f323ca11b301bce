"""A counting gate for the request path: a free place costs no coroutine.

``asyncio.Semaphore`` runs three coroutines per use even when a place is free
(``__aenter__``, ``acquire``, ``__aexit__``); every request and every scheduled poll
takes a place, so here a free one is taken synchronously (``try_enter``) and only a
full gate makes the caller wait (``enter``). First come, first served, like the
semaphore: while anyone waits, nobody jumps the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class Gate:
    """At most ``size`` holders at once; ``leave()`` hands a place to the next in line."""

    __slots__ = ("_free", "_waiters")

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_enter(self) -> bool:
        """Take a place if one is free and nobody is waiting for one."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def enter(self) -> None:
        """Take a place, waiting in line for one."""
        if self.try_enter():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.leave()  # handed a place as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def leave(self) -> None:
        """Give a place back: to the first live waiter, else to the free count."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
