"""Time, as the core takes it: two clocks, both inputs.

* ``now``, passed to every role method, is a **monotonic** clock
  (``time.monotonic()``, or an event loop's ``loop.time()``). Every timer, timeout
  and rate limit runs on it, so a wall-clock step (NTP, a laptop waking up) never
  fires or delays a connection's timers.
* The **wall clock** (POSIX seconds, UTC) stamps what must outlive the process:
  message timestamps, account and session times, session expiry. The server takes
  it as a :data:`WallClock` at construction (``time.time`` in a real server), as it
  takes randomness, so that tests fix or step it.

The core never reads a clock itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

__all__ = ["WallClock"]

WallClock: TypeAlias = Callable[[], float]
"""Returns the current wall-clock time, POSIX seconds (``time.time``)."""
