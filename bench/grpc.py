"""gRPC vs HTTP/JSON on the same server, same texts, at 1 / 64 / 256 closed-loop clients, one run.

    flock /tmp/bench.lock python -m bench.grpc [--duration 10] [--clients 1 64 256]

One `sentiment-serve` with SENTIMENT_GRPC_PORT set; one real IMDb test review per request. For each
client count, in the same run: HTTP/JSON (`POST /v2/models/<m>/infer`, keep-alive connections, requests
pre-built, bench/loadgen.py) then gRPC (`ModelInfer` through one grpc.aio channel, the way tritonclient
and most gRPC clients multiplex: one HTTP/2 connection; messages pre-built). Reported per point:
answers/s, latency p50/p99, and CPU per answer of the client process and of the server (the client's
share matters on a 2-core machine: it competes with the server). Both protocols reach the same runner
and batcher, so the difference is the protocol's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from bench import common, loadgen


def _oip_body(text: str) -> bytes:
    return json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}).encode()


def _grpc_request(model: str, text: str) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(text.encode())
    return pb.ModelInferRequest(model_name=model, inputs=[tensor])


async def grpc_closed_loop(port: int, requests: list[pb.ModelInferRequest], clients: int, duration: float) -> dict[str, object]:
    """`clients` concurrent callers on one channel, each calling back-to-back until `duration` passes."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        await stub.ModelInfer(requests[0], timeout=30)
        started = time.monotonic()
        deadline = started + duration

        async def client(k: int) -> None:
            i = k * 7919
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                try:
                    await stub.ModelInfer(requests[i % len(requests)], timeout=30)
                    latencies.append(time.monotonic() - t0)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                i += 1

        await asyncio.gather(*(client(k) for k in range(clients)))
        ended = time.monotonic()
    latencies.sort()
    return {
        "ok_per_s": len(latencies) / (ended - started),
        "latency_200_ms": loadgen.percentiles(latencies),
        "errors": errors,
        "ok": len(latencies),
    }


async def http_point(port: int, requests: list[bytes], clients: int, duration: float) -> dict[str, object]:
    run = await loadgen.closed_loop("127.0.0.1", port, requests, clients, duration)
    summary = run.summary()
    summary["ok"] = sum(1 for r in run.results if r.outcome == "ok" and r.status == 200)
    return summary


def measure(server: common.Server, work: object) -> dict[str, object]:
    """Run the coroutine `work`, with the client's and the server's CPU seconds around it."""
    client0, server0 = common.cpu_seconds(os.getpid()), common.tree_cpu_seconds(server.pid)
    result = asyncio.run(work)  # type: ignore[arg-type]
    client_s, server_s = common.cpu_seconds(os.getpid()) - client0, common.tree_cpu_seconds(server.pid) - server0
    ok = max(int(result["ok"]), 1)
    return {**result, "client_cpu_ms_per_answer": 1000 * client_s / ok, "server_cpu_ms_per_answer": 1000 * server_s / ok}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--texts", type=int, default=2000)
    args = common.parse_bench_args(parser, argv, "grpc")
    grpc_port = common.free_port()
    server = common.start_service(common.service_env(args, SENTIMENT_GRPC_PORT=str(grpc_port)), name="grpc-bench")
    try:
        model = common.http("GET", f"{server.base}/model")[2]
        name = json.loads(model)["name"]
        texts = common.imdb_test_texts(args.texts)
        http_requests = [loadgen.build_request(f"/v2/models/{name}/infer", _oip_body(t)) for t in texts]
        grpc_requests = [_grpc_request(name, t) for t in texts]
        port = int(server.base.rsplit(":", 1)[1])
        measure(server, http_point(port, http_requests, 8, 2.0))  # warm-up (first batches, allocator)
        points = []
        for clients in args.clients:
            http_result = measure(server, http_point(port, http_requests, clients, args.duration))
            grpc_result = measure(server, grpc_closed_loop(grpc_port, grpc_requests, clients, args.duration))
            points.append({"clients": clients, "http_json": http_result, "grpc": grpc_result})
            print(
                f"{clients:>4} clients: HTTP/JSON {http_result['ok_per_s']:7.1f}/s p50 {http_result['latency_200_ms']['p50']:6.1f} ms"
                f" client {http_result['client_cpu_ms_per_answer']:.2f} ms/ans | gRPC {grpc_result['ok_per_s']:7.1f}/s"
                f" p50 {grpc_result['latency_200_ms']['p50']:6.1f} ms client {grpc_result['client_cpu_ms_per_answer']:.2f} ms/ans",
                flush=True,
            )
        path = common.save(args.out, {"machine": common.machine(), "duration_s": args.duration, "points": points})
        print(f"saved {path}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
