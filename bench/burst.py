"""Burst: many keep-alive connections at once; every request must get a 200 or the service's JSON 503.

    python -m bench.burst [--requests 1500] [--texts 8] [--connections 300] [--rounds 3]

One `sentiment-serve` on the shipped model (default settings); each round, one httpx client with a pool of
--connections keep-alive connections sends --requests requests of --texts real IMDb test reviews each, all
at once (httpx queues them on the pool). A request's fate is its status, or the transport error it raised
(`ReadError`, `RemoteProtocolError`: the connection closed without a response). Pass: every request is a 200
or a 503 whose body is the service's JSON error, in every round, and the server is ready afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter

import httpx

from bench import common


async def one_round(base: str, bodies: list[dict], connections: int, timeout: float) -> dict:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    fates: Counter[str] = Counter()
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as client:

        async def one(body: dict) -> None:
            try:
                reply = await client.post("/predict", json=body)
            except httpx.HTTPError as exc:
                fates[type(exc).__name__] += 1
                return
            if reply.status_code == 503:
                try:
                    json_error = "error" in reply.json()
                except ValueError:
                    json_error = False
                fates["503 json" if json_error else "503 not json"] += 1
            else:
                fates[str(reply.status_code)] += 1

        await asyncio.gather(*(one(b) for b in bodies))
    return {"fates": dict(fates), "seconds": time.monotonic() - started}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--texts", type=int, default=8, help="texts per request")
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120.0, help="client timeout per request, s")
    args = common.parse_bench_args(parser, argv, "burst")
    texts = common.imdb_test_texts()
    bodies = [{"texts": [texts[(i * args.texts + k) % len(texts)] for k in range(args.texts)]} for i in range(args.requests)]
    server = common.start_service(common.service_env(args), name="burst")
    rounds = []
    try:
        for k in range(args.rounds):
            r = asyncio.run(one_round(server.base, bodies, args.connections, args.timeout))
            rounds.append(r)
            print(f"round {k}: {r['fates']} in {r['seconds']:.1f} s", flush=True)
        healthy = common.http("GET", f"{server.base}/health/ready")[0] == 200
    finally:
        exit_code = server.stop()
    bad = sum(n for r in rounds for fate, n in r["fates"].items() if fate not in ("200", "503 json"))
    result = {
        "machine": common.machine(),
        "requests": args.requests,
        "texts_per_request": args.texts,
        "connections": args.connections,
        "rounds": rounds,
        "not_200_or_json_503": bad,
        "healthy_after": healthy,
        "exit_code": exit_code,
        "pass": bad == 0 and healthy and exit_code == 0,
    }
    print(f"requests without a 200 or a JSON 503: {bad} over {args.rounds} rounds; healthy after {healthy}; exit {exit_code}")
    print("PASS" if result["pass"] else "FAIL")
    print(f"wrote {common.save(args.out, result)}")
    return result


if __name__ == "__main__":
    main()
