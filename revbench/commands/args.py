"""Argument types shared by the commands, whose errors keep the parser's own message."""

from __future__ import annotations

import argparse
from pathlib import Path

from revbench.units import parse_bytes


def size(text: str) -> int:
    """A byte size flag (`--budget 80GiB`): the one byte parser, its message shown as is."""
    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _integer(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def positive(text: str) -> int:
    return _integer(text, 1)


def at_least_two(text: str) -> int:
    return _integer(text, 2)


def directory(text: str) -> Path:
    """A directory to write into: created when missing, refused when a file is in the way."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file; give a directory (it is created when missing)")
    return path


def comma_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def option(text: str) -> tuple[str, object]:
    """A technique option `KEY=VALUE`, the value read as YAML reads a suite's (`2` an integer, `true` a bool)."""
    import yaml

    from revbench.orchestrator import strict_yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. checkpoint_every=2), got {text!r}")
    try:
        return key.strip(), strict_yaml.load(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"the value of {key.strip()!r} is not a YAML scalar: {value!r}") from None


def endpoint(text: str) -> str:
    """A rendezvous endpoint HOST:PORT (an IPv6 host in brackets), as torchrun's --rdzv-endpoint takes it."""
    host, sep, port = text.rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port in 1-65535 (e.g. 10.0.0.1:29400), "
                                         f"got {text!r}")
    return text
