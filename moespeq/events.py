"""The event vocabulary shared by the simulator and the runtime, one small recorder, and Chrome-trace export.

Both the SimPy simulator and the CuPy runtime describe what happened with the same names (DESIGN §7), so
simulated and measured timelines can be laid side by side in Perfetto. An event is a span on one track
(a GPU stream or a copy engine) or an instant (a decision on the host):

  track "compute"     draft, verify, attention, expert_compute, prefill, stall
  track "h2d"         h2d_copy (one expert, or one whole layer for hf-offload)
  track "d2h"         d2h_copy (the draft's routing ids on their way to the host ELB)
  track "host"        prefetch_issue, evict, governor, accept (instants: zero duration)

Counters (hits, misses, bytes, ...) are plain integers kept by the objects that own them; the recorder
only keeps the timeline, and costs nothing when it is a `NullRecorder`.

Usage:
    rec = ListRecorder(); rec.span("h2d_copy", "h2d", 0.0, 0.006, layer=3, expert=7)
    write_chrome_trace({"speq": rec}, "timeline.json")   # open in https://ui.perfetto.dev
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ---- the vocabulary ---------------------------------------------------------------------------------
DRAFT = "draft"
VERIFY = "verify"
PREFILL = "prefill"
ATTENTION = "attention"
EXPERT_COMPUTE = "expert_compute"
STALL = "stall"
H2D_COPY = "h2d_copy"
D2H_COPY = "d2h_copy"
PREFETCH_ISSUE = "prefetch_issue"
EVICT = "evict"
GOVERNOR = "governor"
ACCEPT = "accept"
EVENT_NAMES = (DRAFT, VERIFY, PREFILL, ATTENTION, EXPERT_COMPUTE, STALL, H2D_COPY, D2H_COPY, PREFETCH_ISSUE,
               EVICT, GOVERNOR, ACCEPT)

#: track -> Chrome-trace thread id, in the order Perfetto shows them
TRACKS: dict[str, int] = {"compute": 1, "h2d": 2, "d2h": 3, "host": 4}
TRACK_LABELS = {"compute": "GPU compute stream", "h2d": "H2D copy engine", "d2h": "D2H copy engine",
                "host": "host decisions"}


@dataclass(frozen=True)
class Event:
    """One span (dur_s > 0) or instant (dur_s == 0); layer/expert are -1 where they do not apply."""

    name: str
    track: str
    t_s: float
    dur_s: float = 0.0
    layer: int = -1
    expert: int = -1
    args: Mapping[str, Any] = field(default_factory=dict)


class Recorder:
    """The interface: `enabled` says whether callers should bother building events at all."""

    enabled: bool = False

    def span(self, name: str, track: str, t0_s: float, t1_s: float, layer: int = -1, expert: int = -1,
             **args: Any) -> None:
        """A span from t0_s to t1_s on a track."""

    def instant(self, name: str, t_s: float, layer: int = -1, expert: int = -1, **args: Any) -> None:
        """A host decision at t_s."""


class NullRecorder(Recorder):
    """Records nothing; the hot path checks `enabled` and skips building arguments."""


class ListRecorder(Recorder):
    """Keeps every event in order of recording."""

    enabled = True

    def __init__(self) -> None:
        self.events: list[Event] = []

    def span(self, name: str, track: str, t0_s: float, t1_s: float, layer: int = -1, expert: int = -1,
             **args: Any) -> None:
        if name not in EVENT_NAMES or track not in TRACKS:
            raise ValueError(f"unknown event {name!r} or track {track!r}: use moespeq.events.EVENT_NAMES / TRACKS")
        self.events.append(Event(name, track, t0_s, t1_s - t0_s, layer, expert, args))

    def instant(self, name: str, t_s: float, layer: int = -1, expert: int = -1, **args: Any) -> None:
        self.span(name, "host", t_s, t_s, layer, expert, **args)

    def log(self, ndigits: int = 9) -> list[tuple[float, str, int, int]]:
        """(t, event, layer, expert) tuples in time order (stable): the golden-test view of a run."""
        rows = [(round(e.t_s, ndigits), e.name, e.layer, e.expert) for e in self.events]
        return sorted(rows, key=lambda r: r[0])


def chrome_trace(recorders: Mapping[str, ListRecorder]) -> dict[str, Any]:
    """Chrome trace-event JSON: one process per run (e.g. per system), one thread per track.

    Spans are complete events (ph "X") and instants ph "i", with ts/dur in microseconds; metadata
    events name every process and thread, which is what Perfetto and chrome://tracing need.
    """
    trace: list[dict[str, Any]] = []
    for pid, (label, rec) in enumerate(recorders.items(), start=1):
        trace.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": label}})
        for track, tid in TRACKS.items():
            trace.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": TRACK_LABELS[track]}})
            trace.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": tid}})
        for ev in rec.events:
            item: dict[str, Any] = {"name": ev.name, "cat": ev.track, "pid": pid, "tid": TRACKS[ev.track],
                                    "ts": ev.t_s * 1e6, "args": {"layer": ev.layer, "expert": ev.expert, **ev.args}}
            if ev.dur_s > 0:
                item.update(ph="X", dur=ev.dur_s * 1e6)
            else:
                item.update(ph="i", s="t")
            trace.append(item)
    return {"traceEvents": trace, "displayTimeUnit": "ms"}


def write_chrome_trace(recorders: Mapping[str, ListRecorder], path: str | Path) -> None:
    Path(path).write_text(json.dumps(chrome_trace(recorders)) + "\n")
