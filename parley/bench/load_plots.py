"""The load benchmark's pictures: percentiles against concurrent calls; the spike as a timeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ramp(ramp: dict[str, Any], path: Path) -> None:
    """Voice-to-voice p50, p95 and max per step, the goal line, and the CPU each side used."""
    plt = _pyplot()
    steps = ramp["steps"]
    calls = [s["calls"] for s in steps]
    fig, (latency, cpu) = plt.subplots(2, 1, figsize=(8, 8), sharex=True)
    for key, label in (("p50_ms", "p50"), ("p95_ms", "p95"), ("max_ms", "max")):
        latency.plot(calls, [s[key] for s in steps], marker="o", label=label)
    latency.axhline(ramp["goal_p95_ms"], color="grey", linestyle="--", label=f"goal p95 {ramp['goal_p95_ms']:.0f} ms")
    latency.set_ylabel("voice to voice at the client (ms)")
    latency.set_title(f"capacity: {ramp['capacity_calls']} calls at p95 within the goal")
    cpu.plot(calls, [s["server_cores"] for s in steps], marker="o", label="server (with llama-server)")
    cpu.plot(calls, [s["client_cores"] for s in steps], marker="o", label="load client")
    cpu.set_ylabel("cores busy")
    cpu.set_xlabel("concurrent calls")
    for ax in (latency, cpu):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("parley bench load: ramp")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_spike(spike: dict[str, Any], path: Path) -> None:
    """Per second: calls offered, admitted and refused (bars), and p95 of the turns that ended then."""
    plt = _pyplot()
    rows = spike["timeline"]
    seconds = [r["s"] for r in rows]
    fig, (arrivals, latency) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    arrivals.bar(seconds, [r["admitted"] for r in rows], label="admitted", color="tab:green")
    arrivals.bar(seconds, [r["refused"] for r in rows], bottom=[r["admitted"] for r in rows], label="refused",
                 color="tab:red")
    arrivals.step(seconds, [r["offered"] for r in rows], where="mid", color="black", label="offered")
    arrivals.set_ylabel("calls a second")
    latency.plot(seconds, [r["p95_ms"] for r in rows], marker="o", linestyle="none", label="p95 of turns ending")
    latency.set_ylabel("voice to voice (ms)")
    latency.set_xlabel("seconds from the start")
    for ax in (arrivals, latency):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"parley bench load: spike ({spike['factor']}× the arrival rate for {spike['spike_s']:.0f} s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
