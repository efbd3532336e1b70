"""A figure that cannot be measured here degrades to null plus the reason, never to a crash."""

from __future__ import annotations

from typing import Any


def unavailable(reason: str, *fields: str) -> dict[str, Any]:
    return {**dict.fromkeys(fields), "unavailable": reason}
