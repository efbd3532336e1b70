"""`revbench estimate`: peak device and host memory per method without the hardware: will it fit, and at what size?"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from revbench.commands import estimate_gpus
from revbench.commands.args import at_least_two, option, positive, size
from revbench.processes import start_server
from revbench.units import format_bytes

if TYPE_CHECKING:  # torch, transformers and pandas are imported by the handler, not by `revbench --help`
    import pandas as pd

    from revbench.estimate import Estimate, Fit
    from revbench.spec import TrainSpec

TARGETS, AXES = ("cuda", "cpu"), ("batch", "seq")  # as revbench.estimate names them
FIT_CHOICES = ("both", *AXES)
TIMELINE_FORMATS = (".png", ".svg", ".pdf")  # what matplotlib writes
ALL_PRESETS, EVERY_COMBINATION = "all", "combinations"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "estimate", help="estimate peak device and host memory per method without allocating; find what fits",
        description="Runs each method's real training step on fake tensors (no memory is allocated) and reports "
        "the peak tensor bytes of the measured (second) step by category. DeepSpeed ZeRO, which cannot run on "
        "fake tensors, is estimated from a model of DeepSpeed's buffers plus a fake-tensor forward and backward "
        "(and on the device its step, on fake float32 masters), with a device and a host figure. Kernel "
        "workspaces, the CUDA context and allocator fragmentation are not tensors: leave headroom under the GPU's "
        "capacity.")
    parser.add_argument("--model", required=True, metavar="PRESET|PATH",
                        help="a preset (e.g. qwen1.5-moe-a2.7b) or a local Hugging Face config.json (or a directory "
                        "holding one) of a supported family")
    parser.add_argument("--method", default=ALL_PRESETS,
                        help="comma-separated methods: presets or ACTIVATIONS+STATES+LOSS compositions; "
                        f"'{ALL_PRESETS}' (default) for every preset, '{EVERY_COMBINATION}' for every composition")
    parser.add_argument("--batch", type=positive, default=None,
                        help="the (global) batch; default 2, or with --gpus N one sample per GPU (N)")
    parser.add_argument("--seq", type=at_least_two, default=128)
    parser.add_argument("--layers", type=positive, default=None, help="override the model's number of layers")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 for cuda, fp32 for cpu), bf16, fp32, ...")
    parser.add_argument("--device", choices=TARGETS, default="cuda",
                        help="the device kind whose code path is estimated (default cuda)")
    parser.add_argument("--budget", type=size, default=None, metavar="SIZE",
                        help="device memory budget, e.g. 80GiB or 141GB: says which methods fit")
    parser.add_argument("--fit", nargs="?", const="both", choices=FIT_CHOICES, default=None,
                        help="find per method the largest batch (at --seq) and the largest seq (at --batch) under "
                        "--budget; give batch or seq for one of them")
    parser.add_argument("--jobs", type=positive, default=None,
                        help="methods estimated at once, one process each (default: one per method, up to the CPUs "
                        "this process may use); fake-tensor steps are Python-bound, so this divides the wall time")
    parser.add_argument("--json", action="store_true", help="print one JSON object per method, all with the same keys")
    parser.add_argument("--timeline", type=timeline_path, default=None, metavar="PNG",
                        help="also draw each method's live bytes over one step (traced at the full depth), stacked "
                             "by category with the phases shaded, one panel per method; its data go to a CSV beside")
    parser.add_argument("--max-seq", type=at_least_two, default=None, metavar="N",
                        help="with --fit: search sequences up to N tokens instead of the model's "
                        "max_position_embeddings (long-context fine-tuning extends the positions with RoPE scaling, "
                        "which the run's config must set; it changes no tensor's size)")
    parser.add_argument("--option", dest="options", type=option, action="append", default=[], metavar="KEY=VALUE",
                        help="a technique option (repeatable), e.g. checkpoint_every=2: given to each method whose "
                        "techniques take it")
    estimate_gpus.add_arguments(parser)
    parser.set_defaults(handler=handle)


def _methods(text: str) -> list[str]:
    """Method names as given, checked: presets, compositions, or every preset or composition."""
    from revbench.methods import METHODS, parse_method
    from revbench.methods.method import combinations

    if text == ALL_PRESETS:
        return list(METHODS)
    if text == EVERY_COMBINATION:
        return [c.name for c in combinations()]
    names = [m.strip() for m in text.split(",") if m.strip()]
    for name in names:
        parse_method(name)  # an unknown name or technique says what there is
    return names


@dataclass
class Row:
    """One method's answer: the estimate at the given size, and the fits when asked for."""

    estimate: Estimate
    fits: dict[str, Fit]
    seconds: float


def json_row(context: dict[str, Any], row: Row, budget: int | None) -> dict[str, Any]:
    from revbench.methods import parse_method

    e, device, host = row.estimate, row.estimate.tensor_bytes, row.estimate.host_bytes
    out = {**context, "method": e.method, "techniques": parse_method(e.method).to_dict(), "status": e.status,
           "device_peak_bytes": e.peak_bytes, "host_peak_bytes": e.host_peak_bytes,
           "peak_phase": device.phase if device else None}
    for category in ("params", "grads", "optimizer", "workspace", "activations"):
        out[category] = getattr(device, category) if device else None
    for category in ("params", "grads", "optimizer"):
        out[f"host_{category}"] = (getattr(host, category) if host else 0) if device else None
    out["host_activations"] = device.host_activations if device else None
    out["parameters"] = e.parameters
    out["budget_bytes"] = budget
    out["fits"] = None if budget is None or e.peak_bytes is None else e.peak_bytes <= budget
    for axis in AXES:
        fit = row.fits.get(axis)
        out[f"largest_{axis}"] = fit.largest if fit else None
        out[f"largest_{axis}_capped"] = fit.capped if fit else None
    out["reason"] = e.reason
    # "extrapolated" from the small `depths`, or "traced"
    out["depth"], out["depths"], out["depth_note"] = e.depth, list(e.depths), e.depth_note
    out["seconds"] = round(row.seconds, 2)
    return out


def _size(nbytes: int | None) -> str:
    return "0" if nbytes == 0 else format_bytes(nbytes)


def _depth(e: Estimate) -> str:
    return f"{e.depth} ({'-'.join(map(str, e.depths))})" if e.depths else e.depth


def _largest(fit: Fit | None) -> str:
    if fit is None or fit.reason:
        return "-"
    return "none" if fit.largest is None else f"{fit.largest}{'+' if fit.capped else ''}"


def table(rows: list[Row], budget: int | None, batch: int, seq: int) -> pd.DataFrame:
    import pandas as pd

    out = []
    for row in rows:
        e, device = row.estimate, row.estimate.tensor_bytes
        line = {"method": e.method, "device peak": _size(e.peak_bytes), "host": _size(e.host_peak_bytes),
                "peak in": device.phase if device else "-"}
        for category in ("params", "grads", "optimizer", "workspace", "activations"):
            line[category] = _size(getattr(device, category)) if device else "-"
        if budget is not None:
            line["fits"] = "-" if device is None else ("yes" if e.peak_bytes <= budget else "no")
        if "batch" in row.fits:
            line[f"max batch @ seq {seq}"] = _largest(row.fits["batch"])
        if "seq" in row.fits:
            line[f"max seq @ batch {batch}"] = _largest(row.fits["seq"])
        line["depth"] = _depth(e) if device else "-"
        line["s"] = f"{row.seconds:.1f}"
        line["note"] = e.reason or e.depth_note or ""
        out.append(line)
    return pd.DataFrame(out).set_index("method")


def options_for(name: str, options: list[tuple[str, object]]) -> dict[str, object]:
    """The method's share of the --option values: those its techniques take."""
    from revbench.methods import parse_method
    from revbench.methods.composition import option_names

    taken = option_names(parse_method(name))
    return {key: value for key, value in options if key in taken}


def check_options(names: list[str], options: list[tuple[str, object]]) -> None:
    """Refuse an --option that none of the methods takes, before any estimate runs."""
    from revbench.methods import parse_method
    from revbench.methods.composition import option_names

    for key, _ in options:
        if not any(key in options_for(name, options) for name in names):
            taken = sorted({o for name in names for o in option_names(parse_method(name))})
            raise ValueError(f"--option {key}: none of the methods takes it (their options: "
                             f"{', '.join(taken) or 'none'})")


def estimate_row(name: str, spec: TrainSpec, args: argparse.Namespace,
                 progress: Callable[[str], None] | None = None) -> Row:
    """One method's estimate and fits, each probe told to `progress`. A method's session serves all its probes;
    nothing is shared between methods, so each can run in its own process."""
    from revbench.estimate import Sessions, fit_method

    start = time.perf_counter()
    spec = replace(spec, options=options_for(name, args.options))
    sessions = Sessions(spec, args.device)
    estimate = sessions.estimate(name, args.batch, args.seq)
    fits: dict[str, Fit] = {}
    if args.fit and estimate.status == "ok":
        for axis in AXES if args.fit == "both" else (args.fit,):
            seed = {getattr(args, axis): estimate.peak_bytes}  # the given size is a probe already made
            cap = args.max_seq if axis == "seq" else None
            fits[axis] = fit_method(name, spec, args.budget, axis, args.device, cap=cap, progress=progress, probes=seed,
                                    sessions=sessions)
    return Row(estimate, fits, time.perf_counter() - start)


def summary(row: Row) -> str:
    """One line per method as it finishes: its peak, the sizes that fit and the probes it took."""
    e = row.estimate
    line = f"{e.method}: {e.status} in {row.seconds:.1f} s"
    if e.status != "ok":
        return f"{line}: {e.reason}"
    line += f", device peak {format_bytes(e.peak_bytes)} in {e.tensor_bytes.phase}"
    for axis, fit in row.fits.items():
        line += f", largest {axis} {_largest(fit)} ({len(fit.probes)} probes)"
    return line


def estimate_rows(names: list[str], spec: TrainSpec, args: argparse.Namespace) -> list[Row]:
    """Every method's row, one process each where there are several (their probes then go untold: the bar and a
    line per finished method show the progress)."""
    from revbench.estimate.session import relative_cost
    from revbench.processes import map_processes
    from revbench.progress import ItemsProgress

    with ItemsProgress(f"estimating {len(names)} method{'s' if len(names) > 1 else ''}", len(names)) as bar:
        here = len(names) == 1 or args.jobs == 1
        row = functools.partial(estimate_row, spec=spec, args=args, progress=bar.note if here else None)
        return map_processes(row, names, args.jobs, on_done=lambda done: bar.done(summary(done)), cost=relative_cost)


def timeline_path(text: str) -> Path:
    path = Path(text)
    if path.suffix.lower() not in TIMELINE_FORMATS:
        raise argparse.ArgumentTypeError(f"{text!r}: give a picture's path ending in {', '.join(TIMELINE_FORMATS)}")
    return path


def write_estimate_timelines(rows: list[Row], spec: TrainSpec, args: argparse.Namespace, title: str) -> None:
    """Each estimated method's timeline into one picture and CSV; on stderr, where they went and each timeline's
    peak against its estimate's."""
    from revbench.estimate.session import relative_cost
    from revbench.estimate.timeline import timeline_or_reason
    from revbench.processes import map_processes
    from revbench.reports.timeline import write_timelines

    names = [row.estimate.method for row in rows if row.estimate.status == "ok"]
    peaks = {row.estimate.method: row.estimate.peak_bytes for row in rows}
    traced = map_processes(functools.partial(timeline_or_reason, spec=spec, target=args.device), names, args.jobs,
                           cost=relative_cost)
    frames = {name: frame for name, frame, _ in traced if frame is not None}
    for name, frame, why in traced:
        if frame is None:
            print(f"timeline: {name}: none ({why})", file=sys.stderr)
        else:
            same = "equal to" if frame["total"].max() == peaks[name] else "NOT equal to"
            print(f"timeline: {name}: peak {frame['total'].max():,} B, {same} the estimate's", file=sys.stderr)
    if frames:
        picture, csv = write_timelines(frames, args.timeline, title)
        print(f"timeline: {picture} ({csv})", file=sys.stderr)


def handle(args: argparse.Namespace) -> int:
    if args.gpus is not None:
        if args.timeline:
            raise ValueError("--timeline draws one GPU's step; leave out --gpus (per-GPU estimates are a layout model)")
        return estimate_gpus.handle(args)
    if args.jobs != 1 and (args.method in (ALL_PRESETS, EVERY_COMBINATION) or "," in args.method):
        start_server()  # the workers import torch and transformers while this process does
    return estimate(args)


def estimate(args: argparse.Namespace) -> int:
    from revbench.models import ModelSpec, build_config
    from revbench.models.attention import attention_path
    from revbench.models.dtypes import parse_dtype
    from revbench.models.validate import ShapeError, validate_model
    from revbench.spec import TrainSpec
    from revbench.workload import Workload

    args.batch = args.batch or 2
    names = _methods(args.method)
    check_options(names, args.options)
    if args.fit and args.budget is None:
        raise ValueError("--fit needs --budget, e.g. --budget 80GiB")
    if args.max_seq is not None and args.fit not in ("seq", "both"):
        raise ValueError("--max-seq caps the sequence search: give it with --fit (or --fit seq)")
    model = ModelSpec(args.model, layers=args.layers, dtype=args.dtype)
    try:
        validate_model(model)
    except ShapeError as exc:
        flag = {"layers": "--layers", "dtype": "--dtype", "preset": "--model"}.get(exc.path, f"--model ({exc.path})")
        raise ValueError(f"{flag}: {exc.message}") from None
    spec = TrainSpec(model=model, workload=Workload(batch=args.batch, seq=args.seq, data="synthetic"))
    dtype = str(parse_dtype(args.dtype, args.device)).removeprefix("torch.")
    config = build_config(model)
    layers = config.num_hidden_layers
    attention = attention_path(config, args.seq)
    context = {"model": args.model, "layers": layers, "dtype": dtype, "device": args.device, "batch": args.batch,
               "seq": args.seq, "attention": attention,
               "max_seq": args.max_seq or config.max_position_embeddings if args.fit in ("seq", "both") else None}
    start = time.perf_counter()
    rows = estimate_rows(names, spec, args)
    wall = time.perf_counter() - start
    if args.timeline:
        write_estimate_timelines(rows, spec, args, f"{args.model}, {layers} layers, batch {args.batch} x seq "
                                                   f"{args.seq}, {dtype}, {args.device} code path (estimated)")
    if args.json:
        for row in rows:
            print(json.dumps(json_row(context, row, args.budget)))
        return 0
    parameters = next((r.estimate.parameters for r in rows if r.estimate.parameters), None)
    count = (f"{parameters / 1e9:.2f}B" if parameters >= 10**9 else f"{parameters:,}") if parameters else ""
    about = f"{args.model}, {layers} layers" + (f", {count} parameters" if count else "")
    budget = f", budget {format_bytes(args.budget)}" if args.budget is not None else ""
    print(f"Estimated peak memory of one training step after a warm-up step: {about}, batch {args.batch} x seq "
          f"{args.seq}, {dtype}, {args.device} code path{budget}")
    print(table(rows, args.budget, args.batch, args.seq).to_markdown())
    print(f"Attention estimated: {attention}.")
    if args.fit in ("seq", "both"):
        limit = (f"--max-seq {args.max_seq:,} (the model's max_position_embeddings is "
                 f"{config.max_position_embeddings:,}: positions past it need RoPE scaling in the run's config)"
                 if args.max_seq else f"the model's max_position_embeddings, {config.max_position_embeddings:,} "
                 "(lift it with --max-seq)")
        print(f"Sequences searched up to {limit}; a '+' marks a search that reached it still fitting.")
    adamw = ("AdamW's multi-tensor (foreach) path, as torch takes it on CUDA" if args.device == "cuda"
             else "AdamW's per-parameter loop, as torch takes it on CPU")
    print(f"Categories are the device's; `peak in` is the step phase of the device peak. host: what the offload "
          f"keeps in host memory (DeepSpeed's fp32 master weights, gradients and Adam states; FSDP2's shards, their "
          f"gradients and AdamW states; an activation offload's copies, at their own peak at the end of forward). "
          f"depth: extrapolated from "
          f"traces at three consecutive small depths, shown (each phase's peak and its categories exactly affine "
          f"there), or traced at the full depth. Wall time {wall:.1f} s. "
          f"Fake tensors run on the CPU device; byte counts are device-independent up to allocator rounding (CUDA "
          f"rounds each block up to 512 B); the {args.device} code path takes {adamw} unless the method says "
          f"otherwise.")
    return 0
