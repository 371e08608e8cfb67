"""NewestItemWorker: runs the job on its own thread for the newest item only, stops cleanly."""

from __future__ import annotations

import threading
import time

from stereovoxel_ros.core.stereo.newest_item_worker import NewestItemWorker


def test_only_the_newest_item_waiting_is_processed_and_stop_joins():
    started, release = threading.Event(), threading.Event()
    runs: list[tuple[str, int]] = []

    def job(item: int) -> None:
        runs.append((threading.current_thread().name, item))
        started.set()
        release.wait(5)

    worker: NewestItemWorker[int] = NewestItemWorker(job, name="test_worker", poll_s=0.01)
    worker.start()
    assert worker.submit(0) is False
    assert started.wait(5)
    replaced = [worker.submit(i) for i in range(1, 11)]  # all arrive while the first run blocks
    assert replaced == [False] + [True] * 9  # each but the first replaced one never processed
    release.set()
    deadline = time.monotonic() + 5
    while len(runs) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    # ten submissions during the first run -> exactly one more run, with the newest item, on the worker thread
    assert runs == [("test_worker", 0), ("test_worker", 10)]
    worker.stop()
    assert not worker.running
    worker.submit(11)
    time.sleep(0.05)
    assert len(runs) == 2  # stopped: no more runs
