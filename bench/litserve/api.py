"""LitServe server for the benchmark anchor: the same artifact, the same contract encoder, the same forward.

    <litserve venv>/bin/python -m bench.litserve.api --port P [--model M] [--workers 2] [--threads 1]
        [--max-batch-size 64] [--batch-timeout 0.005]

Run by bench/litserve/ls.py with PYTHONPATH=<repo root> (it imports `contract`). LitServe batches requests
itself (max_batch_size, batch_timeout) and calls `predict` with a list of decoded requests in each of
`workers` inference processes; its defaults are kept otherwise (one API server process per worker).
Each worker writes its batch/text counters to BENCH_LS_STATS.<pid>, summed by bench/serve.py.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import litserve as ls
import torch

from contract import artifact as artifact_io
from contract.predictor import Predictor
from contract.scored import label_and_score


class SentimentAPI(ls.LitAPI):
    def __init__(self, model: Path, threads: int, **batching: float) -> None:
        super().__init__(**batching)
        self.model, self.threads = model, threads
        self.batches = self.texts = 0
        self.stats_path = os.environ.get("BENCH_LS_STATS")

    def setup(self, device: str) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        art = artifact_io.load(self.model)
        self.predictor, self.labels = Predictor.from_artifact(art), art.manifest.labels
        self._write_stats()

    def decode_request(self, request: dict) -> str:
        return request["text"]

    def predict(self, texts: list[str]) -> list[float]:
        probs = self.predictor.predict_batch([e.ids for e in self.predictor.encode(texts)])
        self.batches += 1
        self.texts += len(texts)
        self._write_stats()
        return probs

    def encode_response(self, p: float) -> dict:
        label, score = label_and_score(p, self.labels)
        return {"label": label, "score": score, "p_positive": p}

    def _write_stats(self) -> None:
        if self.stats_path:
            path = f"{self.stats_path}.{os.getpid()}"
            with open(path + ".tmp", "w") as f:
                json.dump({"batches": self.batches, "texts": self.texts, "torch_threads": torch.get_num_threads()}, f)
            os.replace(path + ".tmp", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", type=Path, default=Path(__file__).resolve().parents[2] / "models" / "sentiment.pt")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-timeout", type=float, default=0.005)
    args = parser.parse_args()
    api = SentimentAPI(args.model, args.threads, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
