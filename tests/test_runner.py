"""The runner with the tiny real model, and the service's inference call around it: batching must not change
results; explanations; encoding placement; the batch policy from the settings."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import torch

from app import runner as runner_module
from app import service as service_module
from app.config import AUTO_MIN_BATCH_SIZE, Settings
from app.metrics import Metrics
from app.runner import DeviceUnavailable, Runner, ThreadPlan, plan_threads, resolve_device
from app.service import GOLDEN, Service, encode, golden_check, prediction
from contract.artifact import Artifact
from contract.text import normalize_token
from tests.tiny_model import MAX_LENGTH

TEXTS = [
    "A wonderful, moving film. I loved every minute of it!",
    "Dull, boring and awful: a complete waste of time.",
    "great",
    "the plot was a mess and the actors were terrible " * 6,  # longer than MAX_LENGTH tokens
    "It is the best film of the year, brilliant & superb",
    "<br /><br />",  # no tokens at all
    "i hated it",
]


@asynccontextmanager
async def started(settings: Settings, artifact: Artifact, metrics: Metrics | None = None) -> AsyncIterator[Service]:
    service = Service(settings, metrics or Metrics(), artifact)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def test_batched_forward_equals_one_text_at_a_time(tiny_artifact: Artifact) -> None:
    runner = Runner(tiny_artifact)
    jobs = encode(runner, TEXTS, False, None)
    together = [o.p_positive for o in runner.run_batch(jobs)]
    alone = [runner.run_batch([job])[0].p_positive for job in jobs]
    reversed_batch = [o.p_positive for o in runner.run_batch(jobs[::-1])][::-1]
    assert together == pytest.approx(alone, abs=1e-5)
    assert reversed_batch == pytest.approx(alone, abs=1e-5)
    assert all(0.0 <= p <= 1.0 for p in together)


def test_encoding_flags_truncation_and_empty_texts(tiny_artifact: Artifact) -> None:
    runner = Runner(tiny_artifact)
    long_job, empty_job, short_job = encode(runner, [TEXTS[3], TEXTS[5], TEXTS[2]], False, None)
    assert long_job.truncated and long_job.n_tokens == 60 and len(long_job.ids) == MAX_LENGTH
    assert not empty_job.truncated and empty_job.n_tokens == 0 and empty_job.ids == [1]  # [UNK]
    assert not short_job.truncated and short_job.n_tokens == 1


def test_explanations_align_with_the_original_text(tiny_artifact: Artifact) -> None:
    runner = Runner(tiny_artifact)
    jobs = encode(runner, TEXTS, True, None)
    outputs = runner.run_batch(jobs)
    plain = runner.run_batch(encode(runner, TEXTS, False, None))
    for text, job, output, p in zip(TEXTS, jobs, outputs, plain, strict=True):
        assert output.p_positive == pytest.approx(p.p_positive, abs=1e-5)
        answer = prediction(job, output, tiny_artifact.manifest.labels)
        assert answer.explanation is not None
        assert len(answer.explanation) == (len(job.ids) if job.n_tokens else 0)
        for item in answer.explanation:
            assert normalize_token(text[item.start : item.end]) == item.token
    attributions = outputs[0].attributions
    assert attributions is not None and any(a != 0.0 for a in attributions)


def test_labels_and_scores_follow_the_manifest(tiny_artifact: Artifact) -> None:
    runner = Runner(tiny_artifact)
    jobs = encode(runner, TEXTS[:2], False, None)
    labels = tiny_artifact.manifest.labels
    positive, negative = (prediction(j, o, labels) for j, o in zip(jobs, runner.run_batch(jobs), strict=True))
    assert (positive.label, negative.label) == ("positive", "negative")
    assert positive.score == positive.p_positive > 0.5
    assert negative.score == pytest.approx(1 - negative.p_positive) and negative.score > 0.5


def test_the_golden_check_passes_and_has_one_text_per_label(tiny_artifact: Artifact) -> None:
    assert golden_check(Runner(tiny_artifact))
    assert len(GOLDEN) == 2 and {label for _, label in GOLDEN} == {0, 1}


def test_concurrent_predicts_share_forward_passes(
    make_settings: Callable[..., Settings], tiny_artifact: Artifact, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    gate = threading.Event()
    armed = threading.Event()  # ignore the warm-up's forward passes
    run_batch = Runner.run_batch

    def spy(self: Runner, jobs: list[runner_module.Job]) -> list[runner_module.Output]:
        if armed.is_set():
            calls.append(len(jobs))
            gate.wait(10)
        return run_batch(self, jobs)

    monkeypatch.setattr(Runner, "run_batch", spy)

    async def run() -> list[list[float]]:
        async with started(make_settings(max_batch_size=64, model_workers=1, max_batch_padding=100), tiny_artifact) as service:
            armed.set()
            tasks = [asyncio.create_task(service.predict([TEXTS[0]]))]
            while not calls:  # the first text runs alone...
                await asyncio.sleep(0.002)
            tasks += [asyncio.create_task(service.predict([t])) for t in TEXTS[1:]]
            while service.queue_depth < len(TEXTS) - 1:  # ...while the others queue up behind it
                await asyncio.sleep(0.002)
            gate.set()
            return [[p.p_positive for p in r.predictions] for r in await asyncio.gather(*tasks)]

    results = asyncio.run(run())
    armed.clear()
    assert calls == [1, len(TEXTS) - 1]
    alone = Runner(tiny_artifact)
    expected = [alone.run_batch(encode(alone, [t], False, None))[0].p_positive for t in TEXTS]
    assert [r[0] for r in results] == pytest.approx(expected, abs=1e-5)


def test_small_requests_encode_inline_and_large_ones_off_the_loop(
    make_settings: Callable[..., Settings], tiny_artifact: Artifact, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []

    def spy(*args: object) -> list[runner_module.Job]:
        threads.append(threading.current_thread().name)
        return encode(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(service_module, "encode", spy)

    async def run() -> str:
        async with started(make_settings(), tiny_artifact) as service:
            threads.clear()
            loop_thread = threading.current_thread().name
            await service.predict(["great film"])
            await service.predict(["great film " * 1000])  # 11k characters
            return loop_thread

    loop_thread = asyncio.run(run())
    assert threads[0] == loop_thread
    assert threads[1] != loop_thread


def test_metrics_count_texts_tokens_truncation_and_batches(make_settings: Callable[..., Settings], tiny_artifact: Artifact) -> None:
    metrics = Metrics()

    async def run() -> None:
        settings = make_settings(model_workers=1, max_batch_padding=100)  # one batch for both texts, whatever their lengths
        async with started(settings, tiny_artifact, metrics) as service:
            await service.predict([TEXTS[3], "zzzz qqqq great"])

    asyncio.run(run())
    value = metrics.registry.get_sample_value
    assert value("sentiment_texts_total") == 2
    assert value("sentiment_texts_truncated_total") == 1
    assert value("sentiment_tokens_total") == MAX_LENGTH + 3
    assert value("sentiment_unknown_tokens_total") == 2 + 2  # "were" is not in the tiny vocabulary (twice in the kept head+tail)
    assert value("sentiment_batch_size_count", {"kind": "predict"}) == 1
    assert value("sentiment_forward_seconds_count", {"kind": "predict"}) >= 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(DeviceUnavailable, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize(
    ("device", "workers", "threads", "cores", "expected"),
    [
        ("cpu", 0, 0, 2, ThreadPlan(2, 1)),  # the dev box: one 1-thread batch per core
        ("cpu", 0, 0, 1, ThreadPlan(1, 1)),
        ("cpu", 0, 0, 16, ThreadPlan(4, 4)),  # at most 4 batches; the cores shared among them
        ("cpu", 1, 0, 8, ThreadPlan(1, 8)),
        ("cpu", 3, 2, 2, ThreadPlan(3, 2)),  # explicit settings win
        ("cuda", 0, 0, 16, ThreadPlan(1, 0)),
    ],
)
def test_thread_plan_resolves_auto_settings(device: str, workers: int, threads: int, cores: int, expected: ThreadPlan) -> None:
    assert plan_threads(torch.device(device), workers, threads, cores) == expected


def test_two_workers_give_the_same_results_as_one(make_settings: Callable[..., Settings], tiny_artifact: Artifact) -> None:
    async def run(workers: int) -> list[float]:
        async with started(make_settings(max_batch_size=4, model_workers=workers), tiny_artifact) as service:
            results = await asyncio.gather(*(service.predict([t]) for t in TEXTS * 3))
        return [r.predictions[0].p_positive for r in results]

    assert asyncio.run(run(2)) == pytest.approx(asyncio.run(run(1)), abs=1e-5)


@pytest.mark.parametrize(("configured", "expected"), [(0, AUTO_MIN_BATCH_SIZE), (3, 3)])
def test_min_batch_size_is_auto_on_cpu_unless_set(tiny_model_path: Path, configured: int, expected: int) -> None:
    settings = Settings(model_path=tiny_model_path, device="cpu", min_batch_size=configured)
    assert settings.batch_policy(workers=2).min_batch_size == expected


def test_the_batch_policy_comes_from_the_settings_unrenamed(tiny_model_path: Path) -> None:
    settings = Settings(model_path=tiny_model_path, device="cpu", max_batch_padding=1.5, max_queue_age_ms=40, max_batch_tokens=999)
    policy = settings.batch_policy(workers=3)
    assert (policy.max_batch_padding, policy.max_queue_age_ms, policy.max_batch_tokens, policy.workers) == (1.5, 40, 999, 3)
    for name in ("max_batch_size", "max_queue", "queue_age_factor"):
        assert getattr(policy, name) == getattr(settings, name)
