"""SIGTERM under load: no request the server accepted may be lost.

    python -m bench.sigterm [--clients 64] [--before 4] [--rounds 3]

Closed-loop load (N keep-alive connections, single-text requests of real IMDb test reviews) runs against the
service; after --before seconds it gets SIGTERM; the clients keep sending until the process has exited.
The server runs with SENTIMENT_ACCESS_LOG=true so it logs one line per response it *started*.

Definitions (each request's fate is recorded by bench/loadgen.py):
- sent: connect() succeeded and the whole request (headers + body) was written without error;
- accepted by the server: the server began answering it, i.e. it is in the access log;
- lost: sent *before* SIGTERM and not answered completely (status line + full Content-Length body), or
  answered-started by the server (access log) but not received completely by the client.
  Formally: lost = (sent before the signal and outcome != ok) + max(0, access-log lines - complete responses).
- not accepted (fine, safe to retry): after the signal, connect() refused, or the connection closed with zero
  response bytes for a request the server never logged (the keep-alive close race every HTTP/1.1 server has).
- truncated: some but not all of a response arrived: must be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import time

from bench import common, loadgen

ACCESS = re.compile(r'"POST /predict HTTP/1\.1" (\d{3})')


async def one_round(server: common.Server, requests: list[bytes], clients: int, before: float) -> dict:
    port = int(server.base.rsplit(":", 1)[1])
    stop = asyncio.Event()
    signalled: dict[str, float] = {}

    async def killer() -> None:
        await asyncio.sleep(before)
        signalled["t"] = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        while server.proc.poll() is None and time.monotonic() - signalled["t"] < 60:
            await asyncio.sleep(0.01)
        signalled["exited"] = time.monotonic()
        await asyncio.sleep(0.5)  # a little longer, so clients see refusals after the exit
        stop.set()

    kill = asyncio.create_task(killer())
    run = await loadgen.closed_loop("127.0.0.1", port, requests, clients, duration=before + 90, timeout=60, stop=stop)
    await kill
    t_sig = signalled["t"]
    before_sig = [r for r in run.results if r.sent_at < t_sig and r.outcome not in ("refused", "unsent")]
    after_sig = [r for r in run.results if r.sent_at >= t_sig or r.outcome in ("refused", "unsent")]
    complete = [r for r in run.results if r.outcome == "ok"]
    logged = [int(m.group(1)) for m in ACCESS.finditer(server.log.read_text(errors="replace"))]
    lost_before = [r for r in before_sig if r.outcome != "ok" or r.status != 200]
    lost_started = max(0, len(logged) - len(complete))
    outcomes_after: dict[str, int] = {}
    for r in after_sig:
        key = r.outcome if r.outcome != "ok" else f"ok {r.status}"
        outcomes_after[key] = outcomes_after.get(key, 0) + 1
    return {
        "requests": len(run.results),
        "sent_before_signal": len(before_sig),
        "in_flight_at_signal": sum(1 for r in before_sig if r.started_at + r.latency >= t_sig),
        "lost_sent_before_signal": len(lost_before),
        "lost_examples": [(r.outcome, r.status) for r in lost_before[:5]],
        "server_started_responses": len(logged),
        "client_complete_responses": len(complete),
        "lost_started_by_server": lost_started,
        "lost": len(lost_before) + lost_started,
        "truncated": sum(1 for r in run.results if r.outcome == "truncated"),
        "after_signal": outcomes_after,
        "exit_code": server.proc.returncode,
        "shutdown_s": signalled["exited"] - t_sig,
        "last_200_after_signal_s": max((r.started_at + r.latency - t_sig for r in complete if r.status == 200), default=0.0),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--before", type=float, default=4.0, help="seconds of load before SIGTERM")
    parser.add_argument("--rounds", type=int, default=3)
    args = common.parse_bench_args(parser, argv, "sigterm")
    requests = loadgen.predict_requests(common.imdb_test_texts())
    rounds = []
    for k in range(args.rounds):
        env = common.service_env(args, SENTIMENT_ACCESS_LOG="true", SENTIMENT_LOG_LEVEL="info")
        server = common.start_service(env, name=f"sigterm_{k}")
        try:
            r = asyncio.run(one_round(server, requests, args.clients, args.before))
        finally:
            if server.proc.poll() is None:
                server.stop()
        rounds.append(r)
        print(
            f"round {k}: {r['requests']} requests; sent before SIGTERM {r['sent_before_signal']} "
            f"(in flight at the signal {r['in_flight_at_signal']}), lost {r['lost_sent_before_signal']}; "
            f"server started {r['server_started_responses']} responses, client got {r['client_complete_responses']} complete "
            f"-> lost after start {r['lost_started_by_server']}; truncated {r['truncated']}; after the signal {r['after_signal']}; "
            f"exit {r['exit_code']} {r['shutdown_s']:.2f} s after SIGTERM",
            flush=True,
        )
    total_lost = sum(r["lost"] for r in rounds)
    result = {
        "machine": common.machine(),
        "clients": args.clients,
        "rounds": rounds,
        "lost": total_lost,
        "truncated": sum(r["truncated"] for r in rounds),
        "pass": total_lost == 0 and all(r["truncated"] == 0 and r["exit_code"] == 0 for r in rounds),
    }
    print(f"lost = {total_lost} over {args.rounds} rounds -> {'PASS' if result['pass'] else 'FAIL'}")
    print(f"wrote {common.save(args.out, result)}")
    return result


if __name__ == "__main__":
    main()
