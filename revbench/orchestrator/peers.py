"""Ranks on several nodes share no folder and no torchrun: they trade outcomes, and watch each other, through
torchrun's rendezvous store (MASTER_ADDR:MASTER_PORT, which the first node's agent keeps until every node is
done).

torchrun stops the ranks of its own node when one fails, not those of the other nodes, so a rank whose peer died
on another node would wait in a collective until the backend's timeout (30 minutes). Each rank therefore beats a
counter into the store while it trains, and gives up (an outcome naming the peer, then exit) when a peer reports
a failure, or its counter stands still for `lost_after_s()` before it reported anything.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from revbench.orchestrator.outcomes import rank_result, write_json

OUTCOME_KEY = "revbench/outcome"
BEAT_KEY = "revbench/beat"
BEAT_S = 1.0
POLL_S = 0.2


def lost_after_s() -> float:
    """How long a peer's heartbeat may stand still before it is taken for lost (REVBENCH_PEER_LOST_S)."""
    return float(os.environ.get("REVBENCH_PEER_LOST_S", "60"))


def connect(timeout_s: float) -> Any:
    from torch.distributed import TCPStore

    return TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                    timeout=timedelta(seconds=timeout_s))


def _outcome(store: Any, rank: int) -> dict[str, Any] | None:
    key = f"{OUTCOME_KEY}/{rank}"
    return json.loads(store.get(key)) if store.check([key]) else None


class PeerWatch(threading.Thread):
    """Beats this rank's heartbeat and watches the others' while it trains; when a peer fails or goes silent,
    writes this rank's outcome naming that peer (to its file and the store) and exits the process. After
    training, `lost` holds the peers it gave up on (-1: the store itself)."""

    def __init__(self, result: Path, rank: int, ranks: int, where: dict[str, Any]) -> None:
        super().__init__(name="peer-watch", daemon=True)
        self.result, self.rank, self.ranks, self.where = result, rank, ranks, where
        self.training = True
        self.lost: set[int] = set()

    def run(self) -> None:
        patience = lost_after_s()
        try:
            store = connect(patience)
            last_seen = {peer: (None, time.monotonic()) for peer in range(self.ranks) if peer != self.rank}
            beat = 0
            while last_seen:
                beat += 1
                store.set(f"{BEAT_KEY}/{self.rank}", str(beat))
                for peer, (before, since) in list(last_seen.items()):
                    outcome = _outcome(store, peer)
                    if outcome is not None:
                        del last_seen[peer]  # it reported, and may exit: its heartbeat stops
                        if outcome["status"] != "ok":
                            self._lose(peer, f"rank {peer} failed ({outcome['status']}): {outcome['error']}")
                        continue
                    key = f"{BEAT_KEY}/{peer}"
                    now_seen = store.get(key) if store.check([key]) else None
                    if now_seen != before:
                        last_seen[peer] = (now_seen, time.monotonic())
                    elif time.monotonic() - since > patience:
                        del last_seen[peer]
                        self._lose(peer, f"rank {peer} stopped answering: no heartbeat in the rendezvous store for "
                                   f"{patience:g} s and no outcome (it died, or its node was cut off)")
                time.sleep(BEAT_S)
        except (RuntimeError, OSError) as exc:  # the store's host, the first node's torchrun, is gone
            self._lose(-1, f"the rendezvous store at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} stopped "
                       f"answering ({exc}): the first node's torchrun is gone")

    def _lose(self, peer: int, reason: str) -> None:
        self.lost.add(peer)
        if not self.training:
            return
        from revbench.env import environment_stamp

        outcome = {"status": "error", "error": f"stopped waiting for its peers: {reason}", "env": environment_stamp(),
                   "losses": [], "metrics": {}, "method_stats": {}, **self.where}
        write_json(rank_result(self.result, self.rank, self.ranks), outcome)
        trade_outcomes(self.result, outcome, self.rank, self.ranks, collect=False, wait_s=BEAT_S * 5)
        os._exit(1)  # training may sit in a collective that never returns; torchrun then stops this node's ranks


def trade_outcomes(result: Path, outcome: dict[str, Any], rank: int, ranks: int, collect: bool, wait_s: float,
                   watch: PeerWatch | None = None) -> None:
    """Put this rank's outcome in the store and, when `collect`, write every other rank's beside this one's as
    it arrives: for `wait_s` at most, and not for peers the watch gave up on. A rank that never reports is
    named by the parent's merge as one that left no result."""
    if watch is not None:
        watch.training = False
    try:
        store = connect(wait_s)
        store.set(f"{OUTCOME_KEY}/{rank}", json.dumps(outcome))
        pending = set(range(ranks)) - {rank}
        deadline = time.monotonic() + wait_s
        while collect and pending and time.monotonic() < deadline:
            for peer in sorted(pending):
                if (peer_outcome := _outcome(store, peer)) is not None:
                    write_json(rank_result(result, peer, ranks), peer_outcome)
                    pending.discard(peer)
            pending -= watch.lost if watch is not None else set()
            time.sleep(POLL_S)
    except (RuntimeError, OSError) as exc:  # the store's host went away: this node's record names who is missing
        print(f"could not trade outcomes through the rendezvous store: {exc}", flush=True)
