"""A dedicated thread that runs one job each time it is woken, coalescing wake-ups that arrive while it runs.

The nodes run inference here instead of in an executor callback. A guard condition in a busy mutually
exclusive callback group stays "ready" while its callback runs, and rclpy's MultiThreadedExecutor then spins
on it at 100 % CPU, holding the GIL: measured here, that made a 38 ms SGBM frame take ~400 ms inside the node.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class WakeupWorker:
    """Calls ``job()`` on its own thread after :meth:`wake`; wake-ups during a run merge into one more run."""

    def __init__(self, job: Callable[[], None], name: str = "wakeup_worker", poll_s: float = 0.1) -> None:
        self._job = job
        self._name = name
        self._poll_s = poll_s
        self._woken = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread (no-op when it already runs)."""
        if self.running:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Ask for one more run of the job (cheap; callable from any thread)."""
        self._woken.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop after the current run (if any) and join the thread, unless called from the job itself."""
        self._stopping.set()
        self._woken.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            if not self._woken.wait(self._poll_s):
                continue
            self._woken.clear()
            if self._stopping.is_set():
                break
            self._job()
