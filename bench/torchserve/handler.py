"""TorchServe handler for the benchmark anchor: the same artifact, the same contract tokenization, the same forward.

TorchServe batches requests itself (batchSize/maxBatchDelay in model-config.yaml) and hands `handle` a list
of requests; each body is `{"text": "..."}` (a dict when sent as application/json, else bytes). Exactly one
class lives in this module, as TorchServe's loader requires for class-based custom handlers.
`contract` must be importable: bench/torchserve/ts.py starts TorchServe with PYTHONPATH=<repo root>.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from contract import artifact as artifact_io
from contract.predictor import pad_batch


class SentimentHandler:
    def __init__(self) -> None:
        self.initialized = False
        self.batches = 0
        self.texts = 0
        self.stats_path = os.environ.get("BENCH_TS_STATS")

    def initialize(self, context) -> None:
        threads = int(os.environ.get("BENCH_TORCH_THREADS", "0") or 0)
        if threads:
            torch.set_num_threads(threads)
        model_dir = Path(context.system_properties["model_dir"])
        # the service's default route ("auto"), so that both run the same computation
        self.artifact = artifact_io.load(model_dir / context.manifest["model"]["serializedFile"], precision="auto")
        self.encoder = self.artifact.encoder
        self.labels = self.artifact.manifest.labels
        self.initialized = True
        self._write_stats()

    @staticmethod
    def _text(request: dict) -> str:
        body = request.get("data") if request.get("data") is not None else request.get("body")
        if isinstance(body, (bytes, bytearray)):
            body = json.loads(body.decode("utf-8"))
        return body["text"]

    def handle(self, data: list[dict], context) -> list[dict]:
        ids, lengths = pad_batch([self.encoder.encode(self._text(r)).ids for r in data])
        with torch.inference_mode():
            probs = self.artifact.module(ids, lengths).tolist()
        self.batches += 1
        self.texts += len(data)
        self._write_stats()
        return [
            {"label": self.labels[1] if p >= 0.5 else self.labels[0], "score": p if p >= 0.5 else 1 - p, "p_positive": p} for p in probs
        ]

    def _write_stats(self) -> None:
        if self.stats_path:  # one file per worker process: <path>.<pid>, summed by bench/serve.py
            path = f"{self.stats_path}.{os.getpid()}"
            with open(path + ".tmp", "w") as f:
                json.dump({"batches": self.batches, "texts": self.texts, "torch_threads": torch.get_num_threads()}, f)
            os.replace(path + ".tmp", path)
