"""The benchmark figures (matplotlib, SVG): load curves of both servers, the fairness probe's
timeline, memory over a soak. Each function takes plain data and writes one file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

plt.rcParams["svg.hashsalt"] = "reranker"  # stable ids: a re-run diffs only where data moved
plt.rcParams["svg.fonttype"] = "none"  # text stays text (smaller files, searchable)


@dataclass(frozen=True)
class LoadPoint:
    offered_docs_per_s: float
    completed_docs_per_s: float
    p50_s: float
    p99_s: float
    refusals: int = 0
    """429s a client waited out at this load."""


def load_curves(path: Path, curves: Mapping[str, Sequence[LoadPoint]],
                capacity: Mapping[str, float], title: str) -> Path:
    """Completed work and p50/p99 latency (from first send) against offered load, one colour
    per server; each server's saturated closed-loop throughput as a dashed line."""
    fig, (work, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (name, points) in enumerate(curves.items()):
        colour = f"C{i}"
        ordered = sorted(points, key=lambda p: p.offered_docs_per_s)
        offered = [p.offered_docs_per_s for p in ordered]
        work.plot(offered, [p.completed_docs_per_s for p in ordered], "o-", color=colour,
                  label=name)
        if name in capacity:
            work.axhline(capacity[name], color=colour, linestyle="--", linewidth=1,
                         label=f"{name}, closed loop")
        latency.plot(offered, [p.p50_s for p in ordered], "o-", color=colour, label=f"{name} p50")
        latency.plot(offered, [p.p99_s for p in ordered], "s:", color=colour, label=f"{name} p99")
    top = max((p.offered_docs_per_s for ps in curves.values() for p in ps), default=1.0)
    work.plot([0, top], [0, top], color="grey", linewidth=0.8, label="completed = offered")
    work.set(xlabel="offered load (documents/s)", ylabel="completed (documents/s)",
             title="completed work")
    work.set_xlim(left=0)
    work.set_ylim(bottom=0)
    latency.set(xlabel="offered load (documents/s)", ylabel="latency from first send (s)",
                title="latency", yscale="log")
    latency.set_xlim(left=0)
    for ax in (work, latency):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


@dataclass(frozen=True)
class Probe:
    sent_s: float
    """When the small request was sent, from the start of its run."""
    latency_s: float


def fairness_timeline(path: Path, alone: Sequence[Probe], shared: Sequence[Probe],
                      big_span: tuple[float, float], big_tokens: int) -> Path:
    """Small-request latency over time, alone and while the big document was in flight (its
    span shaded)."""
    fig, ax = plt.subplots(figsize=(9, 3.8))
    ax.axvspan(*big_span, color="C1", alpha=0.12,
               label=f"{big_tokens:,}-token request in flight")
    ax.plot([p.sent_s for p in alone], [1000 * p.latency_s for p in alone], ".", color="C0",
            label="small requests, server otherwise idle")
    ax.plot([p.sent_s for p in shared], [1000 * p.latency_s for p in shared], ".", color="C3",
            label="small requests, sharing the server")
    ax.set(xlabel="time from the start of each run (s)", ylabel="latency (ms)",
           title="Small requests while one huge request is scored", ylim=(0, None))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


@dataclass(frozen=True)
class SoakSample:
    t_s: float
    rss_mb: float
    requests_per_s: float
    p99_s: float


def soak_memory(path: Path, samples: Sequence[SoakSample], title: str) -> Path:
    """Resident memory and throughput over a soak; the last third (the steady state the
    target is about) shaded."""
    fig, rss = plt.subplots(figsize=(9, 3.8))
    minutes = [s.t_s / 60 for s in samples]
    rss.plot(minutes, [s.rss_mb for s in samples], "o-", color="C0", label="server RSS (MB)")
    rss.set(xlabel="minutes", ylabel="RSS (MB)", title=title)
    rss.set_ylim(bottom=0)
    if minutes:
        rss.axvspan(minutes[-1] * 2 / 3, minutes[-1], color="grey", alpha=0.1,
                    label="last third")
    rate = rss.twinx()
    rate.plot(minutes, [s.requests_per_s for s in samples], "-", color="C2", alpha=0.7,
              label="requests/s (200)")
    rate.set(ylabel="requests/s")
    rate.set_ylim(bottom=0)
    handles = rss.get_legend_handles_labels()[0] + rate.get_legend_handles_labels()[0]
    rss.legend(handles=handles, fontsize=8, loc="lower right")
    rss.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)
    return path
