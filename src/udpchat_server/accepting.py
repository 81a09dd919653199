"""What a listening thread (the control socket's, the metrics endpoint's) does
when ``accept()`` fails.

At the file descriptor limit (``EMFILE``), ``accept()`` fails at once while the
connection waits in the backlog, so the listening socket stays readable: a loop
that retries at once spins a core, and one that logs each failure with its
traceback wrote 13.5 MB of log in 5 s. :class:`AcceptBackoff` waits a little
longer after each failure in a row (up to :data:`LONGEST_WAIT`), and logs the
cause once per :data:`LOG_INTERVAL`, with how many failed meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

__all__ = ["LOG_INTERVAL", "LONGEST_WAIT", "SHORTEST_WAIT", "AcceptBackoff"]

log = logging.getLogger(__name__)

SHORTEST_WAIT: Final = 0.01
"""Seconds after a first failure (a passing ``ECONNABORTED`` costs nothing)."""
LONGEST_WAIT: Final = 1.0
"""The longest wait between two tries: a freed descriptor is used within a second."""
LOG_INTERVAL: Final = 60.0
"""Seconds between two log lines about failures in a row."""


class AcceptBackoff:
    """The failures of one listening socket's ``accept()``.

    Args:
        what: names the socket in the log (``"control socket"``).
        wait: sleeps for the given seconds (e.g. a stop event's ``wait``, so that
            stopping does not wait for the back-off).
        clock: a monotonic clock, seconds.
    """

    def __init__(
        self,
        what: str,
        *,
        wait: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self._wait = wait
        self._clock = clock
        self._delay = SHORTEST_WAIT
        self._reported = False
        """Whether the failures since the last success were logged (then the
        recovery is too: at most two lines per interval, however it flaps)."""
        self._unlogged = 0
        self._logged_at: float | None = None
        self.failures = 0
        """Failures in all (for tests and curious operators)."""

    def failed(self, exc: OSError) -> None:
        """``accept()`` raised ``exc``: log it if it is time to, then wait."""
        self.failures += 1
        self._unlogged += 1
        now = self._clock()
        if self._logged_at is None or now - self._logged_at >= LOG_INTERVAL:
            log.warning(
                "%s: cannot accept connections: %s (%d failure(s) since the last report; "
                "retrying at most every %g s)",
                self.what,
                exc.strerror or exc,
                self._unlogged,
                LONGEST_WAIT,
            )
            self._logged_at = now
            self._unlogged = 0
            self._reported = True
        delay, self._delay = self._delay, min(LONGEST_WAIT, self._delay * 2)
        self._wait(delay)

    def succeeded(self) -> None:
        """``accept()`` worked: the next failure starts from the shortest wait."""
        if self._reported:
            log.info("%s: accepting connections again", self.what)
            self._reported = False
        self._delay = SHORTEST_WAIT
