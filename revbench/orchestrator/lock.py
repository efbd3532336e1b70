"""One sweep per results directory: an exclusive lock on `<out>/.revbench.lock`, held while the sweep runs.

The lock is an `flock` on an open file, so the kernel releases it when its process ends however it ends
(SIGKILL included). A sweep that ends removes the file; one that was killed leaves it, unlocked: the next
sweep sees it is stale and takes it over. The file
names its holder (pid, host, command, start time) so a refused sweep can say who holds it. Workers do not
inherit the descriptor (close_fds), so a stray worker cannot keep a dead sweep's lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

LOCK_FILE = ".revbench.lock"
TMP_DIR = ".tmp"  # the workers' scratch files (spec, outcome, progress); only the lock holder writes here


class LockedError(ValueError):
    """Another sweep holds the directory's lock."""


def _holder(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "a process that left no details"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
            f"{holder.get('command')}")


class SweepLock:
    """`with SweepLock(out) as lock:` holds the directory for one sweep. `stale` is the holder a killed sweep
    left behind (None when the lock was free), and `cleaned` the scratch directories it left."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_FILE
        self.fd: int | None = None
        self.stale: dict[str, Any] | None = None
        self.cleaned = 0

    @property
    def tmp_dir(self) -> Path:
        return self.out_dir / TMP_DIR

    def acquire(self) -> SweepLock:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = describe(_holder(self.path))
                raise LockedError(f"{str(self.out_dir)!r} is in use by another revbench sweep ({holder}); wait for "
                                  "it to finish, stop it, or give another --out") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # a finishing sweep removed the file we locked: lock the one now at the path
        previous = _holder(self.path)
        self.stale = previous or None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}).encode(), 0)
        self.fd = fd
        if self.tmp_dir.exists():  # scratch of a sweep that was killed: nobody else may be using it now
            self.cleaned = sum(1 for _ in self.tmp_dir.iterdir())
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        os.unlink(self.path)  # still locked: a released directory has no lock file, a killed sweep's stays
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> SweepLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
