"""asyncio futures woken from any thread.

netev delivers events on its I/O threads, or on a dispatcher's thread
(which, attached to a loop, is that loop's). The binding's awaitables
(``Connection.wait_connected``, ``drain``, ``wait_closed``, a listener's
accepted connections) wait on state that those events change; this module
is the one place that hands such a change to the loops waiting on it.

One lock serves every object: it is held only to read or set a few fields,
never while Python code of the user runs, and never across a call into
netev."""

from __future__ import annotations

import threading

lock = threading.Lock()


def _settle(fut, outcome) -> None:
    # Runs on the future's loop: a waiter cancelled meanwhile keeps its end.
    if not fut.done():
        fut.set_result(outcome)


class Waiters:
    """The coroutines waiting on one object. Each waits on a check: a
    function called under :data:`lock` that returns None while the wait
    goes on, else ``(exception, value)``, its outcome."""

    __slots__ = ("_pending",)

    def __init__(self):
        self._pending: list = []  # (check, loop, future)

    async def until(self, check):
        """Returns the value of ``check``'s outcome, or raises its
        exception, once it has one (at once when it already has)."""
        import asyncio

        loop = asyncio.get_running_loop()
        with lock:
            outcome = check()
            if outcome is None:
                fut = loop.create_future()
                # Waits given up (a timeout, a cancelled task) leave here,
                # so a loop that keeps giving up does not grow the list.
                self._pending = [w for w in self._pending if not w[2].done()]
                self._pending.append((check, loop, fut))
        if outcome is None:
            outcome = await fut
        exc, value = outcome
        if exc is not None:
            raise exc
        return value

    def wake(self) -> None:
        """Called on any thread after the state the checks read changed
        (under :data:`lock`): settles each wait whose check has an outcome
        now, on its own loop."""
        ready = []
        with lock:
            if not self._pending:
                return
            waiting = []
            for check, loop, fut in self._pending:
                if fut.done():
                    continue
                outcome = check()
                if outcome is None:
                    waiting.append((check, loop, fut))
                else:
                    ready.append((loop, fut, outcome))
            self._pending = waiting
        for loop, fut, outcome in ready:
            try:
                loop.call_soon_threadsafe(_settle, fut, outcome)
            except RuntimeError:  # that loop is closed: nobody waits any more
                pass
