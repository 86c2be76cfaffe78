"""Shared helpers for the benchmark scripts: real IMDb texts, the machine, a server process, /proc and /metrics readers.

Every script here is run by hand from the repository root (`python -m bench.NAME`), prints its figures
and writes them as JSON under bench/results/ (gitignored) so docs/benchmarks.md can be regenerated.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DATA = ROOT.parent / "shared" / "data" / "aclImdb.tar.gz"
MODEL = ROOT / "models" / "sentiment.pt"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------- data


def imdb_test_texts(n: int = 2000, seed: int = 0) -> list[str]:
    """`n` real IMDb *test* reviews (half positive, half negative), shuffled deterministically; cached in bench/results/."""
    cache = RESULTS / f"imdb_test_{n}_{seed}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    sys.path.insert(0, str(ROOT))
    from training import data  # bench code may import training: it is not part of the service

    dataset = data.load(DATA, limit=(n + 1) // 2)
    texts = [r.text for r in dataset.test][:n]
    random.Random(seed).shuffle(texts)
    RESULTS.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(texts))
    return texts


def write_bodies(texts: list[str], path: Path) -> Path:
    """One JSON request body per line (`json.dumps` escapes newlines), for the wrk Lua script."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


# ---------------------------------------------------------------- machine, /proc


def machine() -> dict[str, object]:
    cpu_model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
    import torch

    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "ram_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_default_threads": torch.get_num_threads(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; utime/stime are fields 14/15 of the full line
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM = peak RSS) in MiB from /proc/<pid>/status."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return rss / 1024, hwm / 1024


def tree_sum(pid: int, measure: Callable[[int], float], *, gone: tuple[type[Exception], ...] = ()) -> float:
    """`measure(p)` summed over a process and all its descendants (TorchServe = JVM + Python workers; the service's
    serving processes), skipping a process that exits meanwhile (and what `gone` adds)."""
    total = 0.0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, *gone):
            total += measure(p)
    return total


def tree_rss_mb(pid: int) -> float:
    """RSS of a process tree, MiB."""
    return tree_sum(pid, lambda p: rss_mb(p)[0], gone=(AttributeError,))


def tree_hwm_mb(pid: int) -> float:
    """Peak RSS (VmHWM) of each process of a tree, summed, MiB: the most the tree can have held."""
    return tree_sum(pid, lambda p: rss_mb(p)[1], gone=(AttributeError,))


def pss_mb(pid: int) -> float:
    """PSS in MiB from /proc/<pid>/smaps_rollup: pages shared with other processes count in part."""
    return int(re.search(r"^Pss:\s+(\d+)", Path(f"/proc/{pid}/smaps_rollup").read_text(), re.M).group(1)) / 1024  # type: ignore[union-attr]


def tree_pss_mb(pid: int) -> float:
    """PSS of a process tree, MiB: pages they share (torch's libraries, mapped by every serving process) counted once
    in all, where summed RSS counts them once per process."""
    return tree_sum(pid, pss_mb, gone=(AttributeError, PermissionError))


def tree_cpu_seconds(pid: int) -> float:
    return tree_sum(pid, cpu_seconds)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def training_running() -> bool:
    return subprocess.run(["pgrep", "-f", "python -m training"], capture_output=True).returncode == 0


def refuse_if_busy(force: bool) -> None:
    """Load benchmarks on a machine that is training give meaningless figures: refuse unless --force."""
    if training_running() and not force:
        raise SystemExit("a `python -m training` process is running; load figures would be meaningless (use --force to run anyway)")


# ---------------------------------------------------------------- HTTP (stdlib only: no client library cost in the figures)


def parse_bench_args(parser: argparse.ArgumentParser, argv: list[str] | None, out: str) -> argparse.Namespace:
    """Add the options every benchmark shares (--model, --env, --out, --force), parse, refuse to run beside a training."""
    parser.add_argument("--model", default=str(MODEL))
    parser.add_argument("--env", nargs="*", default=[], help="extra SENTIMENT_*=value settings, e.g. SENTIMENT_MAX_QUEUE=256")
    parser.add_argument("--out", default=out, help="results name under bench/results/")
    parser.add_argument("--force", action="store_true", help="run even while a training process is running")
    args = parser.parse_args(argv)
    refuse_if_busy(args.force)
    return args


def service_env(args: argparse.Namespace, **settings: str) -> dict[str, str]:
    """SENTIMENT_* variables for a benchmarked service: the model, `settings`, then --env (which wins)."""
    return {"SENTIMENT_MODEL_PATH": str(args.model), **settings, **dict(kv.split("=", 1) for kv in args.env)}


def http(method: str, url: str, body: bytes | None = None, headers: Mapping[str, str] | None = None, timeout: float = 10.0):
    """(status, headers, body bytes); HTTP errors are answers, not exceptions."""
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def post_json(url: str, obj: object, timeout: float = 30.0):
    status, headers, body = http("POST", url, json.dumps(obj).encode(), {"Content-Type": "application/json"}, timeout)
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = body.decode(errors="replace")
    return status, headers, parsed


_METRIC = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)$")


def scrape(url: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (labels kept verbatim)."""
    status, _, body = http("GET", url, timeout=10)
    if status != 200:
        raise RuntimeError(f"GET {url} -> {status}")
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = _METRIC.match(line)
        if m:
            key = m.group("name") + (("{" + m.group("labels") + "}") if m.group("labels") else "")
            out[key] = float(m.group("value"))
    return out


def batch_stats(before: dict[str, float], after: dict[str, float], duration_s: float) -> dict[str, float | None]:
    """Mean batch size and model-thread busy fraction from /metrics deltas (kind="predict")."""

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    batches = delta('sentiment_batch_size_count{kind="predict"}')
    texts = delta('sentiment_batch_size_sum{kind="predict"}')
    forward = sum(delta(k) for k in after if k.startswith('sentiment_forward_seconds_sum{kind="predict"'))  # any precision label
    wait_n = delta("sentiment_queue_wait_seconds_count")
    wait_s = delta("sentiment_queue_wait_seconds_sum")
    return {
        "batches": batches,
        "mean_batch_size": texts / batches if batches else None,
        "mean_forward_ms": 1000 * forward / batches if batches else None,
        "model_busy_fraction": forward / duration_s if duration_s else None,
        "mean_queue_wait_ms": 1000 * wait_s / wait_n if wait_n else None,
    }


# ---------------------------------------------------------------- the service as a subprocess


@dataclass
class Server:
    """A running `sentiment-serve` (or any HTTP server) subprocess."""

    proc: subprocess.Popen[bytes]
    base: str
    log: Path
    ready_s: float | None = None
    ready_all_s: float | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def serve_command(host: str, port: int) -> list[str]:
    """The console script when installed, else the same entry point through python -c."""
    script = Path(sys.executable).with_name("sentiment-serve")
    if script.is_file():
        return [str(script), "--host", host, "--port", str(port)]
    return [sys.executable, "-c", "from app.main import cli; cli()", "--host", host, "--port", str(port)]


def start_service(
    env: Mapping[str, str], name: str = "service", port: int | None = None, ready_timeout: float = 60.0, module: str | None = None
) -> Server:
    """Start the service with SENTIMENT_* `env` on 127.0.0.1; returns once /health/ready is 200 (ready_s = spawn -> 200)
    and, with several serving processes, once each of them has answered (`ready_all_s`).

    `module`: run `python -m module --host --port` instead of the console script (bench experiments)."""
    port = port or free_port()
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = RESULTS / f"{name}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SENTIMENT_")}
    full_env.update({"SENTIMENT_MODEL_PATH": str(MODEL), "SENTIMENT_LOG_LEVEL": "warning", **env})
    started = time.perf_counter()
    with log.open("wb") as out:
        cmd = (
            serve_command("127.0.0.1", port)
            if module is None
            else [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(port)]
        )
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    server.ready_s = wait_ready(server, f"{server.base}/health/ready", started, ready_timeout)
    server.ready_all_s = wait_all_processes(server, started, ready_timeout)
    return server


def wait_all_processes(server: Server, started: float, timeout: float) -> float:
    """Seconds from spawn until every serving process answered: each new connection lands on one process by its hash,
    and /model names the process that answers."""
    processes = json.loads(http("GET", f"{server.base}/model")[2])["processes"]
    seen: set[int] = set()
    while len(seen) < processes:
        if time.perf_counter() - started > timeout:
            server.stop()
            raise RuntimeError(f"{len(seen)} of {processes} serving processes answered within {timeout} s; see {server.log}")
        seen.add(json.loads(http("GET", f"{server.base}/model")[2])["pid"])
    return time.perf_counter() - started


def wait_ready(server: Server, url: str, started: float, timeout: float) -> float:
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}; see {server.log}:\n{server.log.read_text()[-2000:]}")
        try:
            if http("GET", url, timeout=1.0)[0] == 200:
                return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.01)
    server.stop()
    raise RuntimeError(f"not ready within {timeout} s; see {server.log}")


# ---------------------------------------------------------------- wrk


WRK_LUA = Path(__file__).with_name("wrk_post.lua")


def run_wrk(url: str, bodies: Path, connections: int, duration_s: float, timeout_s: float = 30.0) -> dict[str, object]:
    """Closed-loop load: `connections` clients, one request in flight each, for `duration_s`; returns wrk's summary + its CPU."""
    threads = max(1, min(2, connections))
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration_s))}s", "--timeout", f"{round(timeout_s)}s"]
    cmd += ["-s", str(WRK_LUA), url]
    env = {**os.environ, "WRK_BODIES": str(bodies)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    # Wait for exit WITHOUT reaping, so /proc/<pid>/stat still holds wrk's final CPU times.
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    cpu = cpu_seconds(proc.pid)
    proc.wait()
    text = stdout.decode()
    m = re.search(r"^JSON (\{.*\})$", text, re.M)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {text[-2000:]} {stderr.decode()[-2000:]}")
    result = json.loads(m.group(1))
    result["client_cpu_s"] = cpu
    result["client_cores"] = cpu / (result["duration_us"] / 1e6)
    return result


def save(name: str, payload: dict[str, object]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def load_result(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None
