"""Render the measured part of docs/benchmarks.md from bench/results/*.json (between the GENERATED markers).

    python -m bench.report

Text outside the markers (the discussion) is kept as written.
"""

from __future__ import annotations

from bench import common

DOC = common.ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- BEGIN GENERATED (python -m bench.report) -->", "<!-- END GENERATED -->"


def f(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("**met**" if ok else "**missed**")


def machine_section(m: dict) -> list[str]:
    return [
        "### Machine",
        "",
        f"- {m['nproc']} vCPU, {m['cpu_model']} (KVM guest), {m['ram_gib']} GiB RAM, Linux {m['kernel']}",
        f"- Python {m['python']}, torch {m['torch']} (CPU build), torch default intra-op threads {m['torch_default_threads']}",
        f"- load average (1/5/15 min) when recorded: {' / '.join(m['loadavg_at_start'])} (the 1-minute figure includes the previous benchmark)",
        "",
    ]


def raw_section(raw: dict) -> list[str]:
    lines = [
        "### 1. Raw model (the ceiling)",
        "",
        f"`python -m bench.raw_model` — {raw['texts']} IMDb test reviews (mean {raw['mean_chars']:.0f} characters, "
        f"{raw['mean_ids']:.0f} token ids after truncation), one stream with torch intra-op threads: **{raw['torch_threads']}** "
        f"(torch's default). Tokenization alone: {raw['encode_ms_per_review']:.3f} ms per review.",
        "",
        "| batch | model ms/batch (median) | model reviews/s | tokenize+model ms/batch | tokenize+model reviews/s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in raw["rows"]:
        m, e = r["model"], r["end_to_end"]
        lines.append(
            f"| {r['batch_size']} | {f(m['ms_per_batch_median'], 2)} | {f(m['reviews_per_s'])} | "
            f"{f(e['ms_per_batch_median'], 2)} | {f(e['reviews_per_s'])} |"
        )
    lines += [
        "",
        f"Best: model only {f(raw['best_model']['reviews_per_s'])} reviews/s at batch {raw['best_model']['batch_size']}; "
        f"with tokenization {f(raw['best_end_to_end']['reviews_per_s'])} reviews/s at batch {raw['best_end_to_end']['batch_size']}"
        + (f" (the {raw['precision']} route, what SENTIMENT_PRECISION=auto serves there)." if raw.get("precision") else "."),
        "",
    ]
    if (ratios := raw.get("bf16_over_fp32")) and ratios.get("best_model"):
        lines += [
            f"bf16 / fp32, same texts and run: model only {ratios['best_model']:.2f}×, with tokenization {ratios['best_end_to_end']:.2f}×.",
            "",
        ]
    streams = raw.get("streams") or {}
    if streams.get("rows"):
        lines += [
            f"{streams['n']} parallel streams × 1 torch thread, tokenize+model (as the service's {streams['n']} workers run): "
            f"batch 1 on one stream {f(streams.get('batch1_ms_one_stream'), 2)} ms.",
            "",
            "| batch (per stream) | reviews/s, all streams |",
            "|---:|---:|",
            *[f"| {r['batch_size']} | {f(r['reviews_per_s'])} |" for r in streams["rows"]],
            "",
            f"**Raw ceiling** (best of one stream and parallel streams): {f(raw.get('best_any'))} reviews/s.",
            "",
        ]
    return lines


def kernels_section(k: dict) -> list[str]:
    """The BiLSTM routes (bench.raw_model --kernels): reviews/s per route x order x threads x batch size."""
    sizes = [c["batch_size"] for c in k["kernels"][0]["cells"]]
    lines = [
        "### 1a. Kernels: packed vs dense BiLSTM route (model only)",
        "",
        f"`python -m bench.raw_model --kernels` — {k['texts']} IMDb test reviews (mean {k['mean_ids']:.0f} ids), model "
        f"{k['model']['name']} {k['model']['version']}: pad + forward + `.tolist()`. *mixed* = consecutive slices of the shuffled "
        "sample (strangers' texts in arrival order); *sorted* = consecutive slices of the sample sorted by length (what the "
        "batcher cuts when many texts wait). *packed* / *dense* force one route; *auto* is the file's own choice "
        "(dense when padded ≤ 2 × real tokens). Reviews/s; padded/real tokens in brackets.",
        "",
        "| route | order | torch threads | " + " | ".join(f"batch {b}" for b in sizes) + " |",
        "|---|---|---:|" + "---:|" * len(sizes),
    ]
    for r in k["kernels"]:
        cells = " | ".join(f"{f(c['reviews_per_s'])} ({c['padded_over_real']:.2f})" for c in r["cells"])
        route = f"{r['route']} ({r['precision']})" if "precision" in r else r["route"]
        lines.append(f"| {route} | {r['order']} | {r['threads']} | {cells} |")
    best = k["best"]
    if "dense" in best and "packed" in best:
        lines += [
            "",
            f"Best of each route{' in fp32' if 'fp32' in k.get('best_by_precision', {}) else ''} over every order, batch and thread count: packed {f(best['packed'])}, dense {f(best['dense'])}, "
            f"auto {f(best.get('auto'))} reviews/s: **dense / packed = {best['dense'] / best['packed']:.2f}×**.",
        ]
    if k.get("bf16_over_fp32_best_dense"):
        dense = {p: b["dense"] for p, b in k["best_by_precision"].items()}
        lines.append(
            f"Best dense in bf16 vs fp32: {f(dense['bf16'])} vs {f(dense['fp32'])} reviews/s: **bf16 / fp32 = {k['bf16_over_fp32_best_dense']:.2f}×**."
        )
    lines.append("")
    return lines


def request_cost_section(r: dict) -> list[str]:
    return [
        "### 2a. CPU per request",
        "",
        f"`python -m bench.request_cost --clients {r['clients']}` (service defaults{', ' + ' '.join(r['env']) if r['env'] else ''}): "
        f"{f(r['throughput'])} req/s; per request the event loop (main thread) used **{r['loop_ms_per_request']:.3f} ms** of CPU and "
        f"the worker threads {r['model_ms_per_request']:.3f} ms (cores: loop {r['loop_cores']:.2f}, workers {r['model_cores']:.2f}, "
        f"wrk {r['client_cores']:.2f}).",
        "",
    ]


ANCHOR_NAMES = {"litserve": "LitServe", "torchserve": "TorchServe"}


def serve_section(serve: dict) -> list[str]:
    args = serve["args"]
    anchors = [a for a in ANCHOR_NAMES if a in serve["targets"]]
    lines = [
        "### 2. Service vs naive vs " + " vs ".join(ANCHOR_NAMES[a] for a in anchors) + " (same run)",
        "",
        f"`python -m bench.serve` — wrk closed loop, single-text requests, {args['seconds']:.0f} s per point after "
        f"{args['warmup']:.0f} s warm-up; service and naive with their default thread plan, TorchServe with "
        f"{args.get('ts_workers', 1)} worker(s) × {args.get('ts_threads', serve['torch_threads'])} torch thread(s)"
        + (
            f", LitServe 0.2.19 with {args.get('ls_workers', 2)} worker(s) × 1 torch thread, max_batch_size 64, "
            f"batch_timeout {args.get('ls_timeout_ms', 5):g} ms"
            if "litserve" in anchors
            else ""
        )
        + ". "
        "`batch` = mean texts per forward pass from the /metrics histogram deltas (LitServe, TorchServe: the handler's counters); "
        "`model busy` = forward time / wall time; CPU in cores from /proc (server = whole process tree, client = wrk).",
        "",
        "| target | clients | req/s | p50 ms | p95 ms | p99 ms | errors | batch | model busy | server CPU | client CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, t in serve["targets"].items():
        if "error" in t:
            lines.append(f"| {name} | – | failed: {t['error'][:200]} | | | | | | | | |")
            continue
        for p in t["points"]:
            errors = sum(p["errors"].values())
            lines.append(
                f"| {name} | {p['clients']} | {f(p['throughput'])} | {f(p['p50_ms'], 2)} | {f(p['p95_ms'], 2)} | {f(p['p99_ms'], 2)} | "
                f"{errors} | {f(p.get('mean_batch_size'))} | {f(p.get('model_busy_fraction'), 2)} | "
                f"{f(p['server_cores'], 2)} | {f(p['client_cores'], 2)} |"
            )
    lines += ["", "| ratio | " + " | ".join(f"{c} clients" for c in serve["ratios"]["per_clients"]) + " |"]
    lines.append("|---|" + "---:|" * len(serve["ratios"]["per_clients"]))
    keys = [
        ("service_over_raw_ceiling", "service / raw ceiling (tokenize+model, best of 1 and 2 streams)"),
        ("service_over_raw_best_e2e", "service / raw best, one stream (tokenize+model)"),
        ("service_over_raw_best_model", "service / raw best (model only)"),
        ("service_over_naive", "service / naive (throughput)"),
    ]
    for anchor in anchors:
        keys += [
            (f"service_over_{anchor}", f"service / {ANCHOR_NAMES[anchor]} (throughput)"),
            (f"p99_service_over_{anchor}", f"service p99 / {ANCHOR_NAMES[anchor]} p99"),
        ]
    for key, label in keys:
        lines.append(f"| {label} | " + " | ".join(f(row.get(key), 2) for row in serve["ratios"]["per_clients"].values()) + " |")
    lines += ["", "![throughput](bench_throughput.png)", "", "![p99](bench_p99.png)", ""]
    startup_rows = [(n, t) for n, t in serve["targets"].items() if "ready_s" in t]
    if startup_rows:
        lines += ["| target | ready after spawn (s) | RSS at ready (MiB) | RSS idle after load (MiB) | peak RSS (MiB) | exit / stop time |"]
        lines += ["|---|---:|---:|---:|---:|---|"]
        for n, t in startup_rows:
            lines.append(
                f"| {n} | {f(t['ready_s'], 2)} | {f(t['rss_ready_mb'], 0)} | {f(t['rss_idle_after_mb'], 0)} | "
                f"{f(t.get('rss_peak_mb'), 0)} | {t['exit_code']} after {f(t['stop_s'], 1)} s |"
            )
        lines.append("")
    return lines


def startup_section(st: dict) -> list[str]:
    p = st["pieces"]
    return [
        "### 3. Cold start and memory",
        "",
        f"`python -m bench.startup` — {len(st['rounds'])} starts: ready (spawn → first 200 from /health/ready) median "
        f"**{st['ready_s_median']:.2f} s** (max {st['ready_s_max']:.2f} s); idle RSS median **{st['rss_idle_mb_median']:.0f} MiB**.",
        f"Pieces, each in a fresh interpreter: `import torch` {p['import_torch_s']:.2f} s, `import app.main` {p['import_app_s']:.2f} s, "
        f"`import app.main` + load and verify the model {p['import_app_and_load_model_s']:.2f} s (bare interpreter {p['python_only_s']:.2f} s).",
        "",
    ]


def rss_windows(s: dict) -> tuple[float, float]:
    """Mean RSS over [10 %, 20 %) of the run and over its last 10 % (single samples are noisy: batches in flight)."""
    total = s["seconds"]
    early = [x["rss_mb"] for x in s["samples"] if 0.1 * total <= x["t"] < 0.2 * total] or [s["rss_base_mb"]]
    late = [x["rss_mb"] for x in s["samples"] if x["t"] >= 0.9 * total] or [s["rss_end_mb"]]
    return sum(early) / len(early), sum(late) / len(late)


def soak_pass(s: dict) -> bool:
    early, late = rss_windows(s)
    return s["errors"] == 0 and (late - early) / early < 0.05 and s["healthy_after"]


def soak_line(name: str, s: dict) -> str:
    sm = s["summary"]
    lat = sm["latency_200_ms"] or {}
    early, late = rss_windows(s)
    return (
        f"| `{name}` | {s['seconds']:.0f} | {s['rate_req_s']:.0f} | {sm['requests']} | {s['errors']} | {sm['outcomes']} | "
        f"{f(lat.get('p50'), 0)} / {f(lat.get('p99'), 0)} | {s['rss_ready_mb']:.0f} | {early:.0f} → {late:.0f} ({100 * (late - early) / early:+.1f} %) | "
        f"{s['rss_peak_mb']:.0f} | {'PASS' if soak_pass(s) else 'FAIL'} |"
    )


def soak_section(s: dict) -> list[str]:
    lines = [
        "### 4. Soak",
        "",
        f"`python -m bench.soak --seconds {s['seconds']:.0f} --capacity {s['capacity_req_s']:.0f}` — open loop (Poisson) "
        f"at {s['rate_req_s']:.0f} req/s, ~70 % of the {s['capacity_req_s']:.0f} req/s the "
        "service sustained at 64 clients, single-text requests. Pass = 0 errors, RSS growth < 5 % (mean of the last 10 % "
        "of the run vs mean over 10–20 %), healthy after.",
        "",
        "| results | seconds | req/s | requests | errors | outcomes | 200 p50 / p99 ms | RSS ready | RSS mean 10–20 % → last 10 % | peak | verdict |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|",
        soak_line("soak", s),
    ]
    lines += ["", "| window from (s) | requests | p50 ms | p99 ms |", "|---:|---:|---:|---:|"]
    lines += [f"| {w['from_s']:.0f} | {w['n']} | {f(w['p50'])} | {f(w['p99'])} |" for w in s["windows"]]
    lines.append("")
    return lines


def overload_section(o: dict) -> list[str]:
    lines = [
        "### 5. Overload",
        "",
        f"`python -m bench.overload` — open-loop bursts of {o['factor']:.0f}× the measured capacity ({o['capacity_req_s']:.0f} texts/s) "
        f"for 2 s each, default settings. Idle RSS {o['rss_idle_mb']:.0f} MiB, peak (VmHWM) {f(o.get('rss_peak_mb'), 0)} MiB.",
        "",
        "| burst | sent | 200 | 503 (+Retry-After) | 503 without Retry-After | other | 200 p50 / p99 ms | 503 p50 / p99 ms | peak RSS MiB | ready again after |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for name in ("batch", "single"):
        if name not in o:
            continue
        b = o[name]
        s = b["summary"]
        l200, l503 = s["latency_200_ms"] or {}, s["latency_503_ms"] or {}
        other = {k: v for k, v in s["outcomes"].items() if k != "ok"}
        other.update({k: v for k, v in s["statuses"].items() if k not in ("200", "503")})
        lines.append(
            f"| {name} | {b['sent']} | {s['statuses'].get('200', 0)} | {b['503_with_retry_after']} | {b['503_without_retry_after']} | "
            f"{other or '–'} | {f(l200.get('p50'), 0)} / {f(l200.get('p99'), 0)} | {f(l503.get('p50'), 0)} / {f(l503.get('p99'), 0)} | "
            f"{f(b['peak_rss_mb'], 0)} | {f(b['recovered_after_s'], 2)} s |"
        )
    lines.append("")
    return lines


def sigterm_section(s: dict) -> list[str]:
    lines = [
        "### 6. SIGTERM under load",
        "",
        f"`python -m bench.sigterm` — {s['clients']} keep-alive clients, SIGTERM after 4 s of load, {len(s['rounds'])} rounds: "
        f"**lost = {s['lost']}**, truncated = {s['truncated']} → {'PASS' if s['pass'] else 'FAIL'}.",
        "",
        "| round | requests | sent before SIGTERM | in flight at SIGTERM | lost of those | responses started (server log) | complete (client) "
        "| after SIGTERM | exit, time to exit |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for k, r in enumerate(s["rounds"]):
        lines.append(
            f"| {k} | {r['requests']} | {r['sent_before_signal']} | {r['in_flight_at_signal']} | {r['lost_sent_before_signal']} | "
            f"{r['server_started_responses']} | {r['client_complete_responses']} | {r['after_signal']} | "
            f"{r['exit_code']}, {r['shutdown_s']:.2f} s |"
        )
    lines.append("")
    return lines


def profile_section(profiles: list[dict]) -> list[str]:
    lines = ["### 7. Where the time goes (py-spy)", ""]
    for p in profiles:
        settings = {k: v for k, v in p["env"].items() if k != "SENTIMENT_MODEL_PATH"} or "defaults"
        lines += [
            f"`python -m bench.profile --out {p['name']}` — {p['clients']} clients, settings {settings}, {f(p['throughput'])} req/s while sampled.",
            "",
        ]
        for thread, t in p["threads"].items():
            cats = ", ".join(f"{k} {v} %" for k, v in list(t["categories_pct"].items())[:7])
            lines.append(f"- **{thread}**: on CPU {100 * t['busy_fraction']:.0f} % of the time — {cats}")
        lines.append("")
    return lines


def main() -> None:
    serve, raw = common.load_result("serve"), common.load_result("serve_raw") or common.load_result("raw_model")
    parts: list[str] = [BEGIN, ""]
    machine = (serve or raw or {}).get("machine")
    if machine:
        parts += machine_section(machine)
    if raw:
        parts += raw_section(raw)
    if kernels := common.load_result("raw_kernels"):
        parts += kernels_section(kernels)
    if serve:
        parts += serve_section(serve)
    if cost := common.load_result("request_cost"):
        parts += request_cost_section(cost)
    if st := common.load_result("startup"):
        parts += startup_section(st)
    if s := common.load_result("soak"):
        parts += soak_section(s)
    if o := common.load_result("overload"):
        parts += overload_section(o)
    if s := common.load_result("sigterm"):
        parts += sigterm_section(s)
    profiles = []
    for name in ("profile", "profile_workers2"):
        if p := common.load_result(name):
            profiles.append({**p, "name": name})
    if profiles:
        parts += profile_section(profiles)
    parts.append(END)
    generated = "\n".join(parts)
    text = DOC.read_text() if DOC.is_file() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + generated + tail
    else:
        text += "\n" + generated + "\n"
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
