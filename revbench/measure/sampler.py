"""A background thread that polls a reading and keeps its maximum, for figures with no peak counter."""

from __future__ import annotations

import threading
from collections.abc import Callable


class PeakSampler:
    """Polls `read()` every `interval_s` seconds between start() and stop(); `peak` is the largest reading."""

    def __init__(self, read: Callable[[], int], interval_s: float = 0.01) -> None:
        self.read = read
        self.interval_s = interval_s
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="revbench-sampler")

    def _sample(self) -> None:
        self.peak = max(self.peak, self.read())
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def start(self) -> PeakSampler:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self._sample()
        return self.peak
