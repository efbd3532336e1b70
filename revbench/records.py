"""Run records: one JSON object per run, appended atomically to `results.jsonl`.

Every table and plot is derived from these records. `SCHEMA` is bumped on any incompatible change.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "revbench.run/1"
STATUSES = ("ok", "oom", "error", "timeout", "diverged")
RESULTS_FILE = "results.jsonl"


@dataclass
class RunRecord:
    run_id: str
    suite: str
    method: str
    status: str
    config: dict[str, Any]  # the full resolved TrainSpec plus the run's step counts
    env: dict[str, Any]
    error: str | None = None
    losses: list[float] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    method_stats: dict[str, Any] = field(default_factory=dict)
    started: str | None = None
    finished: str | None = None
    duration_s: float | None = None
    schema: str = SCHEMA

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown run status {self.status!r}; one of {', '.join(STATUSES)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"record {data.get('run_id')!r} has schema {data.get('schema')!r}; "
                             f"this revbench reads {SCHEMA!r}")
        return cls(**data)


PROJECT_ROOT = Path(__file__).resolve().parent.parent


def project_relative(path: str | Path) -> str:
    """A file inside the project by its path relative to the project root (so committed records do not carry
    one machine's layout); a file elsewhere by its absolute path."""
    resolved = Path(path).expanduser().resolve()
    try:
        return resolved.relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return str(resolved)


def run_id(suite: str, method: str, config: dict[str, Any], repeat: int) -> str:
    """Stable id of a run: the same suite, method, resolved config and repeat give the same id (resume)."""
    blob = json.dumps({"suite": suite, "method": method, "config": config, "repeat": repeat}, sort_keys=True)
    return f"{method}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}-r{repeat}"


def append_record(directory: str | Path, record: RunRecord) -> Path:
    """Append one record as one line, under an exclusive lock, flushed to disk before returning."""
    path = Path(directory) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record.to_dict(), sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a writer killed mid-line: keep its torn line apart
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


# The types of a record's fields, and the config entries every table and check reads.
_TYPES: dict[str, tuple[type, ...]] = {
    "run_id": (str,), "suite": (str,), "method": (str,), "status": (str,), "config": (dict,), "env": (dict,),
    "error": (str, type(None)), "losses": (list,), "metrics": (dict,), "method_stats": (dict,),
    "started": (str, type(None)), "finished": (str, type(None)), "duration_s": (int, float, type(None)),
    "schema": (str,),
}
_REQUIRED = ("run_id", "suite", "method", "status", "config", "env")
_CONFIG: dict[str, tuple[str, ...]] = {"model": ("preset", "layers", "dtype"), "workload": ("batch", "seq")}


def record_problem(data: Any) -> str | None:
    """Why `data` (one decoded line) is not a run record this revbench can read; None when it is one."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    if data.get("schema") != SCHEMA:
        return f"schema {data.get('schema')!r}, this revbench reads {SCHEMA!r}"
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        return f"no {', '.join(missing)}"
    extra = sorted(set(data) - set(_TYPES))
    if extra:
        return f"unknown field {', '.join(extra)}"
    for key, types in _TYPES.items():
        if key in data and (isinstance(data[key], bool) or not isinstance(data[key], types)):
            return f"{key} is a {type(data[key]).__name__}"
    if data["status"] not in STATUSES:
        return f"unknown status {data['status']!r}"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in data["losses"]):
        return "losses holds a value that is not a number"
    return None


def run_config_problem(config: dict[str, Any]) -> str | None:
    """Why a record's config is not that of a benchmark run (`revbench run`), whose tables read these keys;
    None when it is one. Other drivers' records (the quality study's) have configs of their own."""
    if not isinstance(config.get("device"), str):
        return "config has no device"
    for section, keys in _CONFIG.items():
        if not isinstance(config.get(section), dict) or any(k not in config[section] for k in keys):
            return f"config.{section} lacks {', '.join(keys)}"
    return None


def read_records(path: str | Path, config_problem: Callable[[dict[str, Any]], str | None] | None = None
                 ) -> Iterator[RunRecord]:
    """Records of a results file (or a directory holding one). A line that is not a record (torn by a killed
    writer, edited, from another schema), or whose config `config_problem` finds wrong, is skipped with a
    warning naming its line and why; never raises for a file's content."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no results file at {str(path)!r}" + (
            " (give a results directory or its results.jsonl)" if path.exists() else ""))
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            line = raw.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                warnings.warn(f"{path}:{number}: skipped a line that is not JSON ({exc})", stacklevel=2)
                continue
            problem = record_problem(data)
            if problem is None and config_problem is not None:
                problem = config_problem(data["config"])
            if problem:
                warnings.warn(f"{path}:{number}: skipped a record: {problem}", stacklevel=2)
                continue
            yield RunRecord.from_dict(data)


def latest(records: Iterable[RunRecord]) -> list[RunRecord]:
    """The last record of each run id, in first-seen order (a resumed or retried run appends it again)."""
    by_id: dict[str, RunRecord] = {}
    for record in records:
        by_id.pop(record.run_id, None)
        by_id[record.run_id] = record
    return list(by_id.values())
