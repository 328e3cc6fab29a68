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
    """Per variant, voice-to-voice p50 (dashed) and p95 against concurrent calls, the goal line,
    and the CPU each side used."""
    plt = _pyplot()
    fig, (latency, cpu) = plt.subplots(2, 1, figsize=(9, 9), sharex=True)
    for name, variant in ramp["variants"].items():
        steps = variant["steps"]
        calls = [s["calls"] for s in steps]
        (line,) = latency.plot(calls, [s["p95_ms"] for s in steps], marker="o", label=f"{name} p95")
        latency.plot(calls, [s["p50_ms"] for s in steps], linestyle="--", color=line.get_color(), label=f"{name} p50")
        cpu.plot(calls, [s["server_cores"] for s in steps], marker="o", color=line.get_color(), label=f"{name}: server")
        cpu.plot(calls, [s["client_cores"] for s in steps], marker="x", linestyle=":", color=line.get_color(),
                 label=f"{name}: load client")
    latency.axhline(ramp["goal_p95_ms"], color="grey", linestyle="--", label=f"goal p95 {ramp['goal_p95_ms']:.0f} ms")
    latency.set_ylabel("voice to voice at the client (ms)")
    latency.set_title(f"capacity with every rung shed: {ramp['capacity_calls']} calls at p95 within the goal")
    cpu.set_ylabel("cores busy (server with llama-server)")
    cpu.set_xlabel("concurrent calls")
    for ax in (latency, cpu):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
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
