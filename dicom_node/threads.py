"""A background thread that sleeps until woken: the node's housekeeper and the SCP's early
write-back share its start and stop."""

from __future__ import annotations

import threading


class WakeableThread:
    """A daemon thread running :meth:`_run`, which waits on ``self._wake`` and returns once
    ``self._stop`` is set.

    Args:
        name: The thread's name (shown in logs and stack dumps).
    """

    def __init__(self, name: str) -> None:
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (a pass in progress finishes first, bounded by ``timeout``)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        raise NotImplementedError
