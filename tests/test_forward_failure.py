"""A forward pass that raises (issue 30, part 4): its requests get a JSON 500, every other request and the worker go on.

The fault is injected into the runner's worker-thread call of the model
(`Runner.run_batch`): texts of POISON_TOKENS tokens make it raise, as a model bug that one
input triggers would. The batcher reruns a failed batch one text at a time,
so only the requests holding the bad text fail; a fault that passes (the
first batch only) costs no request at all.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.runner import Job, Output, Runner
from tests.conftest import ServeFactory

POISON_TOKENS = 37
POISON = " ".join(["dull"] * POISON_TOKENS)
MODEL = "/v2/models/tiny-test-model"


class _Fault:
    """Makes Runner.run_batch raise on batches holding POISON (or on the first batch only) once `armed`; records batch sizes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, first_only: bool = False) -> None:
        self.armed = False  # the golden check at start-up runs clean
        self.sizes: list[int] = []
        original = Runner.run_batch  # patched on the class before start: `process` looks it up per batch

        def forward(runner: Runner, jobs: list[Job]) -> list[Output]:
            if self.armed:
                self.sizes.append(len(jobs))
                if len(self.sizes) == 1 if first_only else any(job.n_tokens == POISON_TOKENS for job in jobs):
                    raise RuntimeError("injected fault in the forward pass")
            return original(runner, jobs)

        monkeypatch.setattr(Runner, "run_batch", forward)


def _oip(texts: list[str]) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}


@pytest.mark.anyio
async def test_a_raising_forward_pass_fails_only_its_requests_with_a_json_500(serve: ServeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # No padding cap: the bad text and the good ones can share a batch.
    fault = _Fault(monkeypatch)
    async with serve(max_batch_padding=100.0) as (client, _):
        fault.armed = True
        bad, good, bad_oip = await asyncio.gather(
            client.post("/predict", json={"texts": ["a fine film", POISON]}),
            client.post("/predict", json={"texts": ["a wonderful film", "awful"]}),
            client.post(f"{MODEL}/infer", json=_oip([POISON])),
        )
        assert bad.status_code == 500, bad.text
        error = bad.json()["error"]
        assert error["type"] == "internal_error" and "request id" in error["message"]
        assert "injected" not in bad.text  # internals are logged, not sent
        assert bad_oip.status_code == 500 and isinstance(bad_oip.json()["error"], str)
        assert good.status_code == 200 and len(good.json()["predictions"]) == 2
        assert max(fault.sizes) > 1, "the bad text never shared a batch; the test shows nothing about batch-mates"

        # The worker goes on: later requests, batched or not, are answered.
        after = await asyncio.gather(*(client.post("/predict", json={"texts": [f"review number {i}"]}) for i in range(8)))
        assert [r.status_code for r in after] == [200] * 8
        assert (await client.get("/health/ready")).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'sentiment_http_requests_total{method="POST",route="/predict",status="500"} 1.0' in metrics


@pytest.mark.anyio
async def test_a_forward_pass_that_fails_once_costs_no_request(serve: ServeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    fault = _Fault(monkeypatch, first_only=True)
    async with serve(model_workers=1) as (client, _):  # one worker: both texts in one batch
        fault.armed = True
        response = await client.post("/predict", json={"texts": ["a fine film", "a dull film"]})
    assert response.status_code == 200, response.text
    assert fault.sizes[:3] == [2, 1, 1]  # the batch failed, then each text ran alone
