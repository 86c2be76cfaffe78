"""Throughput and p99 latency vs concurrency for service, naive, LitServe and TorchServe, from bench/results/<name>.json.

python -m bench.plots [serve [OUTDIR]]     -> docs/bench_throughput.png, docs/bench_p99.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench import common

DOCS = common.ROOT / "docs"
STYLE = {"service": ("tab:blue", "o", "service (batching, max 64, 2 workers x 1 thread)"), "naive": ("tab:gray", "s", "naive (batch size 1)"),
         "litserve": ("tab:green", "D", "LitServe 0.2.19 (batch 64, 5 ms timeout, 2 workers x 1 thread)"),
         "torchserve": ("tab:orange", "^", "TorchServe (batch 64, 5 ms delay, 2 workers x 1 thread)")}  # fmt: skip
# Series from other runs of bench.serve, drawn dashed when their results exist (label says which run).
EXTRA = [
    ("serve_one_worker", "service", "tab:blue", "first version: 1 model thread x 2 torch threads"),
]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    name = argv[0] if argv else "serve"
    result = common.load_result(name)
    if result is None:
        raise SystemExit(f"no bench/results/{name}.json: run `python -m bench.serve` first")
    outdir = Path(argv[1]) if len(argv) > 1 else DOCS
    outdir.mkdir(exist_ok=True)
    machine = result["machine"]
    subtitle = f"{machine['nproc']} vCPU {machine['cpu_model']}, default thread plans; wrk closed loop, 1 IMDb review/request"
    for key, ylabel, fname, log in (
        ("throughput", "requests (reviews) / s", "bench_throughput.png", False),
        ("p99_ms", "p99 latency (ms)", "bench_p99.png", True),
    ):
        fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
        for target, data in result["targets"].items():
            points = data.get("points")
            if not points:
                continue
            color, marker, label = STYLE.get(target, (None, "x", target))
            ax.plot([p["clients"] for p in points], [p[key] for p in points], marker=marker, color=color, label=label)
        if name == "serve":
            for extra_name, target, color, label in EXTRA:
                points = ((common.load_result(extra_name) or {}).get("targets", {}).get(target) or {}).get("points")
                if points:
                    xs, ys = [p["clients"] for p in points], [p[key] for p in points]
                    ax.plot(xs, ys, ls="--", marker=".", color=color, label=label, alpha=0.8)
        if key == "throughput":
            raw = result["raw"]["best_end_to_end"]
            label = f"raw model, one stream (tokenize+forward, batch {raw['batch_size']})"
            ax.axhline(raw["reviews_per_s"], color="tab:green", ls=":", label=label)
            if (ceiling := result["raw"].get("best_any")) and ceiling > raw["reviews_per_s"]:
                ax.axhline(ceiling, color="tab:green", ls="-.", label="raw model ceiling (parallel streams x 1 thread)")
        ax.set_xscale("log", base=2)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.set_title(("Throughput" if key == "throughput" else "p99 latency") + " vs concurrency", fontsize=11)
        fig.text(0.5, 0.005, subtitle, ha="center", fontsize=7, color="dimgray")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        fig.savefig(outdir / fname)
        plt.close(fig)
        print(f"wrote {outdir / fname}")


if __name__ == "__main__":
    main()
