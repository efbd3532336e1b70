"""The checks a suite point must pass before any worker starts: its name, model shape, data and optimizer.

Each raises `FieldError` with the dotted field and the allowed values, so `revbench run` refuses a suite in
a second instead of failing inside a worker after the model was built. The type of every field is already
checked by `schema.build`; these are the ranges and the files that must exist.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from revbench.data import BYTE_VOCAB
from revbench.models import ModelSpec, build_config
from revbench.models.validate import ShapeError, validate_model
from revbench.orchestrator.schema import FieldError
from revbench.spec import OptimizerSpec
from revbench.workload import Workload, default_text_path

# A suite's name becomes a directory under results/ and reports/: one plain path component.
SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_name(name: str) -> None:
    if not SLUG.fullmatch(name) or ".." in name:
        raise FieldError("name", f"must be a plain name of letters, digits, '.', '_' or '-' (at most 100, no "
                         f"'..', no '/'), as it names the directories results/<name> and reports/<name>; "
                         f"got {name!r}")


# What a suite's device may be: torch also reads `cpu:0`, but the CPU has no index, and a record's device is compared
# by name (a cpu:0 run would not be the cpu run it is).
DEVICE = re.compile(r"auto|cpu|cuda(:\d{1,4})?")
SEED_MAX = 2**32 - 1  # the data stream seeds torch generators with seed x 1,000,033 + step, within 64 bits


def check_device(device: str) -> None:
    if not DEVICE.fullmatch(device):
        hint = " (the CPU has no index: cpu)" if device.startswith("cpu:") else ""
        raise FieldError("device", f"expected auto, cpu, cuda or cuda:N, got {device!r}{hint}")


def check_seed(seed: int, path: str = "seed") -> None:
    if not 0 <= seed <= SEED_MAX:
        raise FieldError(path, f"must be in [0, {SEED_MAX}], got {seed}")


def check_model(model: ModelSpec) -> None:
    try:
        validate_model(model)
    except ShapeError as exc:
        raise FieldError(f"model.{exc.path}", exc.message) from None


def check_workload(workload: Workload, model: ModelSpec) -> None:
    if workload.data != "text":
        return
    if workload.text_path is not None:
        path = Path(workload.text_path).expanduser()
        if not path.is_file():
            raise FieldError("workload.text_path", f"text file {workload.text_path!r} does not exist "
                             "(give a readable file, or leave it unset for CPython's pydoc topics)")
    else:
        path = default_text_path()
    train = int(path.stat().st_size * (1.0 - workload.heldout_fraction))
    if train <= workload.seq:
        raise FieldError("workload.text_path", f"{str(path)!r} holds {train} training bytes, fewer than "
                         f"workload.seq={workload.seq}; use a longer text or a shorter seq")
    if model.path is None:
        vocab = build_config(model).vocab_size
        if vocab < BYTE_VOCAB:
            raise FieldError("model.config.vocab_size", f"byte-level text (workload.data: text) needs a vocabulary "
                             f"of at least {BYTE_VOCAB}, got {vocab}; use workload.data: synthetic")


def check_optimizer(optimizer: OptimizerSpec) -> None:
    """AdamW's own ranges (torch checks them only when the optimizer is built, inside the worker)."""
    ranges = (("lr", optimizer.lr, "> 0", optimizer.lr > 0),
              ("weight_decay", optimizer.weight_decay, ">= 0", optimizer.weight_decay >= 0),
              ("eps", optimizer.eps, "> 0", optimizer.eps > 0))
    for name, value, allowed, ok in ranges:
        if not ok or not math.isfinite(value):
            raise FieldError(f"optimizer.{name}", f"must be a finite number {allowed}, got {value!r}")
    for i, beta in enumerate(optimizer.betas):
        if not 0.0 <= beta < 1.0:
            raise FieldError(f"optimizer.betas[{i}]", f"must be in [0, 1), got {beta!r}")
