"""Faults during a sweep: SIGINT and SIGKILL of the parent and of a worker, a torn last line, a second sweep
into the same directory, a stale lock; then resume. In every case no record is lost or duplicated.

Runs are the smallest there are (1 layer, 1 sequence of 16 tokens, 1 step): each is a few seconds, most of
it the worker importing torch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from revbench.cli import main
from revbench.orchestrator.lock import LOCK_FILE, TMP_DIR, LockedError, SweepLock

ROOT = Path(__file__).resolve().parent.parent
TINY = ("name: faults\nmodel: {preset: tiny-qwen2-moe, layers: 1}\nworkload: {batch: 1, seq: 16}\ndevice: cpu\n"
        "methods: [standard]\nsteps: 1\nwarmup: 1\ntimeout_s: 300\n")
DEADLINE_S = 240


def wait_for(condition: Callable[[], object], what: str, sweep: subprocess.Popen | None = None) -> object:
    deadline = time.monotonic() + DEADLINE_S
    while not (value := condition()):
        assert sweep is None or sweep.poll() is None, f"the sweep ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def complete_lines(results: Path) -> list[str]:
    """The lines that are whole records (a torn line is not)."""
    if not results.is_file():
        return []
    out = []
    for line in results.read_text().splitlines():
        try:
            if isinstance(json.loads(line), dict):
                out.append(line)
        except json.JSONDecodeError:
            continue
    return out


def workers(pid: int) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "revbench.orchestrator.worker" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def start_sweep(suite: Path, out: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "revbench", "run", str(suite), "--out", str(out), "--no-report",
                             *flags], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def assert_kept(before: list[str], results: Path, runs: int) -> list[dict]:
    """Every complete line from before is still there, unchanged, and each run has exactly one ok record."""
    after = complete_lines(results)
    assert after[: len(before)] == before
    records = [json.loads(line) for line in after]
    ok = [r["run_id"] for r in records if r["status"] == "ok"]
    assert len(ok) == len(set(ok)) == runs, [(r["run_id"], r["status"]) for r in records]
    return records


@pytest.fixture(autouse=True)
def sigint_handled() -> Iterator[None]:
    """A shell starts a background job (`cmd &`, as under nohup) with SIGINT ignored, and a child inherits an
    ignored signal through exec: the sweeps these tests interrupt would finish as if never sent it. A handled
    signal is reset to the default in a child, so the sweep and its workers take Python's own handler."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    path = tmp_path / "faults.yaml"
    path.write_text(TINY + "repeats: 3\n")
    return path


@pytest.mark.slow
def test_parent_faults_a_second_sweep_a_torn_line_and_resume(tmp_path: Path, suite: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    results, lock = out / "results.jsonl", out / LOCK_FILE

    # 1. A second sweep into the same directory is refused, naming the first; then SIGINT to the first.
    first = start_sweep(suite, out)
    wait_for(lambda: complete_lines(results), "the first record", first)
    assert main(["run", str(suite), "--out", str(out), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert f"is in use by another revbench sweep (pid {first.pid} on" in err and "revbench run" in err
    busy = workers(first.pid)
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=60) == 130
    assert "interrupted: the finished runs are in" in first.stdout.read()
    for worker in busy:
        worker.wait(timeout=30)  # the parent took its worker down with it
    assert not lock.exists() and not (out / TMP_DIR).exists()  # released cleanly
    before = complete_lines(results)
    assert 1 <= len(before) < 3

    # 2. SIGKILL of the parent: no cleanup at all; its lock and scratch stay behind.
    second = start_sweep(suite, out)
    wait_for(lambda: workers(second.pid), "a worker", second)
    busy = workers(second.pid)
    second.kill()
    second.wait()
    for worker in busy:
        worker.wait(timeout=30)  # an orphaned worker notices and exits
    assert json.loads(lock.read_text())["pid"] == second.pid
    assert any((out / TMP_DIR).iterdir())
    before = complete_lines(results)

    # 3. A torn last line, as a writer killed mid-write leaves it.
    with results.open("a") as f:
        f.write(before[0][:70])

    # 4. Resume: takes the stale lock over, removes the scratch, skips the torn line, runs the rest.
    assert main(["run", str(suite), "--out", str(out), "--no-report"]) == 0
    captured = capsys.readouterr()
    assert f"took over the lock of a sweep that ended without releasing it (pid {second.pid}" in captured.out
    assert "scratch folder(s) that a killed sweep left" in captured.out
    assert f"results.jsonl:{len(before) + 1}: skipped a line that is not JSON" in captured.err
    assert_kept(before, results, runs=3)
    assert not lock.exists() and not (out / TMP_DIR).exists()


@pytest.mark.slow
def test_worker_faults_exit_codes_and_retry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "faults.yaml"
    suite.write_text(TINY + "repeats: 2\n")
    out = tmp_path / "results"
    results = out / "results.jsonl"
    out.mkdir()
    (out / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "elsewhere", "command": "revbench run x",
                                             "started": "2026-01-01T00:00:00+00:00"}))  # a stale lock

    sweep = start_sweep(suite, out)
    for sig in (signal.SIGKILL, signal.SIGINT):  # one fault per run, each to the worker alone
        done = len(complete_lines(results))
        worker = wait_for(lambda: workers(sweep.pid), f"a worker to send {sig.name}", sweep)[0]
        os.kill(worker.pid, sig)
        wait_for(lambda done=done: len(complete_lines(results)) > done, f"the record after {sig.name}", sweep)
    assert sweep.wait(timeout=60) == 1  # no run finished ok
    printed = sweep.stdout.read()
    assert "took over the lock of a sweep that ended without releasing it (pid 999999 on elsewhere" in printed
    assert "exit 1: no run finished ok" in printed
    records = [json.loads(line) for line in complete_lines(results)]
    assert [r["status"] for r in records] == ["error", "error"]
    assert "was killed by SIGKILL" in records[0]["error"]
    # A SIGINT that lands before the interpreter has installed its handler kills the worker outright; after, it
    # raises KeyboardInterrupt, which the worker's log ends with. Either way the record says so.
    assert "KeyboardInterrupt" in records[1]["error"] or "was killed by SIGINT" in records[1]["error"]

    # Resume without --retry: nothing runs, the skipped runs and the flag are named, still exit 1.
    assert main(["run", str(suite), "--out", str(out), "--no-report"]) == 1
    printed = capsys.readouterr().out
    assert "2 error are not re-run (re-run them with --retry error)" in printed
    before = complete_lines(results)
    assert len(before) == 2

    # --retry error runs them again; --strict passes once every run is ok.
    assert main(["run", str(suite), "--out", str(out), "--no-report", "--retry", "error", "--strict"]) == 0
    assert_kept(before, results, runs=2)


def test_the_lock_refuses_a_second_holder_and_takes_over_a_stale_one(tmp_path: Path) -> None:
    first = SweepLock(tmp_path).acquire()
    (first.tmp_dir / "run-1").mkdir(parents=True)
    with pytest.raises(LockedError, match=rf"in use by another revbench sweep \(pid {os.getpid()} on"):
        SweepLock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / LOCK_FILE).exists() and not first.tmp_dir.exists()
    with SweepLock(tmp_path) as second:
        assert second.stale is None and second.cleaned == 0
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 4242, "host": "h", "command": "c", "started": "s"}))
    (tmp_path / TMP_DIR / "left-behind").mkdir(parents=True)
    with SweepLock(tmp_path) as third:
        assert third.stale == {"pid": 4242, "host": "h", "command": "c", "started": "s"} and third.cleaned == 1
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
