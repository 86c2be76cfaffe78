"""Cold start (process spawn -> first 200 from /health/ready) and idle RSS of the service, over several starts.

    python -m bench.startup [--rounds 5]

Also times the pieces a start is made of, each in a fresh interpreter: `import torch`, `import app.main`
(FastAPI, uvicorn, pydantic, torch), and loading + verifying the model file (contract.artifact.load), so a
slow start can be attributed. RSS is VmRSS from /proc/<pid>/status, summed over the serving processes, at ready
(every process answering) and after 3 s idle; PSS (smaps_rollup) counts the pages they share once.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from bench import common


def fresh_python(code: str) -> float:
    """Seconds for a fresh interpreter to run `code` (includes interpreter start)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=common.ROOT, check=True, capture_output=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = common.parse_bench_args(parser, argv, "startup")
    pieces = {
        "python_only_s": statistics.median(fresh_python("pass") for _ in range(3)),
        "import_torch_s": statistics.median(fresh_python("import torch") for _ in range(3)),
        "import_app_s": statistics.median(fresh_python("import app.main") for _ in range(3)),
        "import_app_and_load_model_s": statistics.median(
            fresh_python(f"import app.main; from contract import artifact; artifact.load({args.model!r})") for _ in range(3)
        ),
    }
    rounds = []
    for k in range(args.rounds):
        server = common.start_service(common.service_env(args), name=f"startup_{k}")
        try:
            rss_ready, pss_ready = common.tree_rss_mb(server.pid), common.tree_pss_mb(server.pid)
            time.sleep(3)
            rss_idle, pss_idle = common.tree_rss_mb(server.pid), common.tree_pss_mb(server.pid)
        finally:
            code = server.stop()
        rounds.append(
            {
                "ready_s": server.ready_s,
                "ready_all_s": server.ready_all_s,
                "rss_ready_mb": rss_ready,
                "rss_idle_mb": rss_idle,
                "pss_ready_mb": pss_ready,
                "pss_idle_mb": pss_idle,
                "exit_code": code,
            }
        )
        print(
            f"round {k}: ready in {server.ready_s:.2f} s (every process: {server.ready_all_s:.2f} s), RSS at ready {rss_ready:.0f} MiB, "
            f"idle {rss_idle:.0f} MiB; PSS {pss_ready:.0f} / {pss_idle:.0f} MiB; exit {code}"
        )
    result = {
        "machine": common.machine(),
        "pieces": pieces,
        "rounds": rounds,
        "ready_s_median": statistics.median(r["ready_s"] for r in rounds),
        "ready_s_max": max(r["ready_s"] for r in rounds),
        "rss_idle_mb_median": statistics.median(r["rss_idle_mb"] for r in rounds),
        "pss_idle_mb_median": statistics.median(r["pss_idle_mb"] for r in rounds),
    }
    print(
        f"pieces (fresh interpreter each): {', '.join(f'{k} {v:.2f}' for k, v in pieces.items())}\n"
        f"ready: median {result['ready_s_median']:.2f} s, max {result['ready_s_max']:.2f} s; idle RSS median {result['rss_idle_mb_median']:.0f} MiB, PSS {result['pss_idle_mb_median']:.0f} MiB"
    )
    print(f"wrote {common.save(args.out, result)}")
    return result


if __name__ == "__main__":
    main()
