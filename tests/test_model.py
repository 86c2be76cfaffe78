"""The model's BiLSTM routes (training/model.py): dense and packed give the same answers, both scripted, for every pooling;
the bf16 route stays within its own bounds (1e-3 within the route) and near fp32, and leaves fp32 and the weights untouched."""

from __future__ import annotations

import random

import pytest
import torch

from contract import artifact
from contract.predictor import pad_batch
from training.__main__ import parse
from training.export import BF16_TOLERANCE, check_bf16, model_from
from training.model import POOLINGS, SentimentLSTM

TOLERANCE = 1e-5


@pytest.fixture(scope="module", params=POOLINGS)
def scripted(request: pytest.FixtureRequest) -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    model = SentimentLSTM(vocab_size=50, embed_dim=12, hidden=10, dropout=0.3, pooling=request.param).eval()
    with torch.no_grad():  # non-trivial weights, so a wrong direction or gather would show
        for parameter in model.parameters():
            parameter.normal_(0, 0.5)
    return torch.jit.script(model)


def _ids(n: int, seed: int, longest: int = 40) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(2, 50) for _ in range(rng.randint(1, longest))] for _ in range(n)]


def _route(module: torch.jit.ScriptModule, dense: bool) -> None:
    module.dense_max_padding = float("inf") if dense else 0.0


@pytest.fixture(autouse=True)
def _restore(scripted: torch.jit.ScriptModule):
    default = scripted.dense_max_padding
    yield
    scripted.dense_max_padding = default
    scripted.set_precision("fp32")


@torch.inference_mode()
def test_dense_and_packed_routes_agree_on_mixed_lengths(scripted: torch.jit.ScriptModule) -> None:
    x, lengths = pad_batch(_ids(24, seed=1))  # lengths 1..40: heavy padding, rows of length 1 included
    _route(scripted, dense=True)
    dense = scripted(x, lengths)
    _route(scripted, dense=False)
    packed = scripted(x, lengths)
    assert float((dense - packed).abs().max()) < TOLERANCE
    assert float((dense - packed).abs().max()) < float(dense.std())  # the outputs differ between rows: the check bites


@torch.inference_mode()
def test_dense_route_ignores_padding_and_batch_mates(scripted: torch.jit.ScriptModule) -> None:
    _route(scripted, dense=True)
    ids = _ids(8, seed=2)
    x, lengths = pad_batch(ids)
    padded = torch.cat([x, torch.zeros(x.size(0), 17, dtype=x.dtype)], 1)  # [B, T + 17]: extra padding after every row
    alone = torch.cat([scripted(*pad_batch([row])) for row in ids])
    assert float((scripted(x, lengths) - alone).abs().max()) < TOLERANCE
    assert float((scripted(padded, lengths) - alone).abs().max()) < TOLERANCE


def test_explain_agrees_between_routes(scripted: torch.jit.ScriptModule) -> None:
    x, lengths = pad_batch(_ids(6, seed=3))
    with torch.enable_grad():
        _route(scripted, dense=True)
        p_dense, a_dense = scripted.explain(x, lengths)  # [B], [B, T]
        _route(scripted, dense=False)
        p_packed, a_packed = scripted.explain(x, lengths)
    assert float((p_dense - p_packed).abs().max()) < TOLERANCE
    assert float((a_dense - a_packed).abs().max()) < TOLERANCE
    assert float(a_dense.abs().max()) > 1e-3
    padding = torch.arange(x.size(1))[None, :] >= lengths[:, None]
    assert float(a_dense[padding].abs().max()) == 0.0


def test_route_choice_follows_padding_and_training_always_packs() -> None:
    model = SentimentLSTM(vocab_size=10, embed_dim=4, hidden=4, dropout=0.0, dense_max_padding=2.0).eval()
    assert model.use_dense(torch.tensor([10, 10, 10]), 10)  # no padding
    assert model.use_dense(torch.tensor([10, 5]), 10)  # 20 padded / 15 real
    assert not model.use_dense(torch.tensor([10, 1, 1]), 10)  # 30 / 12
    model.train()
    assert not model.use_dense(torch.tensor([10, 10, 10]), 10)  # training reproduces the packed history


@torch.inference_mode()
def test_poolings_differ_and_re_export_keeps_the_pooling(scripted: torch.jit.ScriptModule) -> None:
    x, lengths = pad_batch(_ids(8, seed=4))
    rebuilt = model_from(scripted, dropout=0.0)  # what a kernel re-export of a shipped file starts from
    assert rebuilt.pooling == scripted.pooling
    assert float((rebuilt(x, lengths) - scripted(x, lengths)).abs().max()) < TOLERANCE
    torch.manual_seed(0)
    other = SentimentLSTM(50, 12, 10, 0.0, pooling="max" if scripted.pooling != "max" else "mean").eval()
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.normal_(0, 0.5)
    assert float((other(x, lengths) - scripted(x, lengths)).abs().max()) > 1e-3


def test_pooling_is_a_training_flag_with_its_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse(["--pooling", "last"]).pooling == "last"
    assert parse([]).pooling == "max+mean"  # the shipped recipe
    with pytest.raises(SystemExit):
        parse(["--pooling", "attention"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(ValueError, match="pooling must be one of"):
        SentimentLSTM(10, 4, 4, 0.0, pooling="attention")


@torch.inference_mode()
def test_bf16_route_ignores_padding_batch_mates_and_route_within_its_bound(scripted: torch.jit.ScriptModule) -> None:
    ids = _ids(24, seed=5)  # lengths 1..40: the auto route groups these
    x, lengths = pad_batch(ids)
    padded = torch.cat([x, torch.zeros(x.size(0), 17, dtype=x.dtype)], 1)  # [B, T + 17]
    scripted.set_precision("bf16")
    alone = torch.cat([scripted(*pad_batch([row])) for row in ids])  # [B]
    for limit in (float("inf"), 2.0, 0.0):  # one dense batch; length groups; every text its own group
        scripted.dense_max_padding = limit
        assert float((scripted(x, lengths) - alone).abs().max()) <= BF16_TOLERANCE
        assert float((scripted(padded, lengths) - alone).abs().max()) <= BF16_TOLERANCE


@torch.inference_mode()
def test_bf16_route_is_near_fp32_but_really_bf16_and_fp32_comes_back_exact(scripted: torch.jit.ScriptModule) -> None:
    x, lengths = pad_batch(_ids(32, seed=6))
    before = {k: v.clone() for k, v in scripted.state_dict().items()}
    fp32 = scripted(x, lengths)
    scripted.set_precision("bf16")
    assert scripted.precision == "bf16" and scripted.bf16_weights[0].dtype == torch.bfloat16
    bf16 = scripted(x, lengths)
    assert bf16.dtype == torch.float32  # pooling, head and sigmoid in fp32
    assert 0 < float((bf16 - fp32).abs().max()) < 2e-2  # rounded, so not identical, but close
    assert bool(((bf16 >= 0.5) == (fp32 >= 0.5)).all())
    assert scripted.state_dict().keys() == before.keys()  # the bf16 copies are no state: weights sha256 unchanged
    assert all(torch.equal(v, before[k]) for k, v in scripted.state_dict().items())
    scripted.set_precision("fp32")
    assert torch.equal(scripted(x, lengths), fp32) and scripted.bf16_weights[0].numel() == 0


def test_explain_runs_fp32_whatever_the_precision(scripted: torch.jit.ScriptModule) -> None:
    x, lengths = pad_batch(_ids(6, seed=7))
    with torch.enable_grad():
        p_fp32, a_fp32 = scripted.explain(x, lengths)
        scripted.set_precision("bf16")
        p_bf16, a_bf16 = scripted.explain(x, lengths)
    assert torch.equal(p_fp32, p_bf16) and torch.equal(a_fp32, a_bf16)


def test_an_unknown_precision_is_refused(scripted: torch.jit.ScriptModule) -> None:
    with pytest.raises(Exception, match="precision must be fp32 or bf16"):
        scripted.set_precision("fp16")
    assert scripted.precision == "fp32"


def test_the_export_checks_the_bf16_route_and_leaves_the_module_fp32(scripted: torch.jit.ScriptModule) -> None:
    checks = check_bf16(scripted, _ids(40, seed=8))
    assert checks["bf16_routes_max_abs_diff"] <= BF16_TOLERANCE and checks["bf16_padding_max_abs_diff"] <= BF16_TOLERANCE
    assert 0 < checks["bf16_vs_fp32_max_abs_diff"] < 2e-2
    assert scripted.precision == "fp32" and scripted.bf16_weights[0].numel() == 0  # saved as fp32, without the copies
    assert artifact.has_bf16_route(scripted)
