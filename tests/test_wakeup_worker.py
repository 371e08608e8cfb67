"""WakeupWorker: runs the job on its own thread, coalesces wake-ups during a run, stops cleanly."""

from __future__ import annotations

import threading
import time

from stereovoxel_ros.wakeup_worker import WakeupWorker


def test_wakeups_during_a_run_merge_into_one_more_run_and_stop_joins():
    started, release = threading.Event(), threading.Event()
    runs: list[str] = []

    def job() -> None:
        runs.append(threading.current_thread().name)
        started.set()
        release.wait(5)

    worker = WakeupWorker(job, name="test_worker", poll_s=0.01)
    worker.start()
    worker.wake()
    assert started.wait(5)
    for _ in range(10):  # all of these arrive while the first run blocks
        worker.wake()
    release.set()
    deadline = time.monotonic() + 5
    while len(runs) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    # ten wake-ups during the first run -> exactly one more run, on the worker thread
    assert runs == ["test_worker", "test_worker"]
    worker.stop()
    assert not worker.running
    worker.wake()
    time.sleep(0.05)
    assert len(runs) == 2  # stopped: no more runs
