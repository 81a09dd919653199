"""The benchmarks' plots, drawn from their JSON summaries (matplotlib, the ``bench``
extra: ``pip install -e '.[bench]'``).

* :func:`latency_plot`: p50 and p99 against the offered rate (``relay.py``), with
  the 5 ms target and the saturation throughput;
* :func:`scaling_plot`: delivered messages/s against load-generator processes, for
  udpchat and the raw relay (``relay.py --scaling``);
* :func:`memory_plot`: bytes per idle connection against connections
  (``sessions.py``), with the 4 KiB target.

Each writes one PNG and returns its path. Run as a script to redraw from saved
JSON: ``python benchmarks/plots.py relay.json sessions.json --out docs/perf``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["latency_plot", "memory_plot", "scaling_plot"]

TARGET_P99_MS = 5.0
TARGET_BYTES = 4096


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(
            "plots need matplotlib: pip install -e '.[bench]' (the benchmark-only extra)"
        ) from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def latency_plot(summary: dict[str, Any], out: Path) -> Path:
    """Latency percentiles against offered load, from ``relay.py --json``."""
    plt = _pyplot()
    steps = summary["latency"]
    offered = [s["offered"] for s in steps]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(offered, [s["p50_ms"] for s in steps], "o-", label="p50")
    ax.plot(offered, [s["p99_ms"] for s in steps], "s-", label="p99 (median of runs)")
    ax.fill_between(
        offered,
        [s["p99_ms_min"] for s in steps],
        [s["p99_ms_max"] for s in steps],
        alpha=0.2,
        label="p99, min-max over runs",
    )
    ax.axhline(TARGET_P99_MS, color="red", linestyle="--", linewidth=1, label="5 ms target")
    ax.axvline(
        summary["udpchat_msgs_per_s"],
        color="gray",
        linestyle=":",
        linewidth=1,
        label=f"saturation {summary['udpchat_msgs_per_s']:,.0f}/s",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plt.FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_xlabel("offered messages/s (open loop)")
    ax.set_ylabel("send -> delivery latency, ms")
    title = f"udpchat-server, SQLite, {summary['connections']} connections, 2 cores"
    return _save(fig, ax, plt, title, out / "latency.png")


def scaling_plot(points: list[dict[str, Any]], out: Path) -> Path:
    """Throughput against load-generator processes, from ``relay.py --scaling``."""
    plt = _pyplot()
    workers = [p["workers"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(workers, [p["udpchat_msgs_per_s"] for p in points], "o-", label="udpchat server")
    ax.plot(workers, [p["raw_relay_msgs_per_s"] for p in points], "s--", label="raw UDP relay")
    ax.set_yscale("log")
    ax.set_xticks(workers)
    ax.set_xlabel("load-generator processes (16 pairs each)")
    ax.set_ylabel("delivered messages/s at saturation")
    title = "Throughput against generator processes (2 cores, shared)"
    return _save(fig, ax, plt, title, out / "throughput.png")


def memory_plot(summary: dict[str, Any], out: Path) -> Path:
    """Bytes per idle logged-in connection against connections, from ``sessions.py``."""
    plt = _pyplot()
    rows = summary["sizes"]
    sizes = [r["connections"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(sizes, [r["rss_bytes_per_conn"] for r in rows], "o-", label="RSS growth")
    traced = [(r["connections"], r["traced_bytes_per_conn"]) for r in rows]
    traced = [(n, b) for n, b in traced if b is not None]
    if traced:
        ax.plot(*zip(*traced, strict=True), "s--", label="Python heap (tracemalloc)")
    ax.axhline(TARGET_BYTES, color="red", linestyle="--", linewidth=1, label="4 KiB target")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("idle logged-in connections")
    ax.set_ylabel("server bytes per connection")
    title = f"Memory per idle connection (store: {summary['store']})"
    return _save(fig, ax, plt, title, out / "memory.png")


def _save(fig: Any, ax: Any, plt: Any, title: str, path: Path) -> Path:
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summaries", nargs="+", type=Path, help="JSON from --json runs")
    parser.add_argument("--out", type=Path, default=Path("docs/perf"))
    args = parser.parse_args()
    for path in args.summaries:
        summary = json.loads(path.read_text())
        if "latency" in summary:
            print(latency_plot(summary, args.out))
            if summary.get("scaling"):
                print(scaling_plot(summary["scaling"], args.out))
        elif "sizes" in summary:
            print(memory_plot(summary, args.out))
        else:
            raise SystemExit(f"{path}: neither relay.py's nor sessions.py's JSON")


if __name__ == "__main__":
    main()
