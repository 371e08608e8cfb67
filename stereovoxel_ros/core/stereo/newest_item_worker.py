"""A dedicated thread that processes only the newest submitted item; items it had no time for are dropped.

The nodes run inference here instead of in an executor callback. A guard condition in a busy mutually
exclusive callback group stays "ready" while its callback runs, and rclpy's MultiThreadedExecutor then spins
on it at 100 % CPU, holding the GIL: measured here, that made a 38 ms SGBM frame take ~400 ms inside the node.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class NewestItemWorker(Generic[T]):
    """Calls ``job(item)`` on its own thread for the newest item :meth:`submit` gave it.

    An item submitted while the job runs replaces any earlier one still waiting, so the job never falls
    behind. ``job`` must handle its own errors (a node logs and counts them) and not raise.
    """

    def __init__(
        self, job: Callable[[T], None], name: str = "newest_item_worker", poll_s: float = 0.1
    ) -> None:
        self._job = job
        self._name = name
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._pending: tuple[T] | None = None  # boxed so that None can be an item
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

    def submit(self, item: T) -> bool:
        """Queue ``item`` as the next to process; True when it replaced one that was never processed."""
        with self._lock:
            replaced = self._pending is not None
            self._pending = (item,)
        self._woken.set()
        return replaced

    def stop(self, timeout_s: float = 5.0) -> None:
        """Drop any waiting item, stop after the current job and join, unless called from the job itself."""
        self._stopping.set()
        self._woken.set()
        with self._lock:
            self._pending = None
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            if not self._woken.wait(self._poll_s):
                continue
            self._woken.clear()
            with self._lock:
                pending, self._pending = self._pending, None
            if pending is None or self._stopping.is_set():
                continue
            self._job(pending[0])
