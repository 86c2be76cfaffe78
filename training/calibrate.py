"""Temperature scaling (Guo et al. 2017) and the calibration figures: ECE and Brier score."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 minimising validation NLL of sigmoid(logits / T). logits, labels: FloatTensor[N]."""
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE over `bins` equal-width bins of the predicted label's confidence (Naeini et al. 2015)."""
    confidence = torch.where(probs >= 0.5, probs, 1 - probs)  # [N]
    correct = ((probs >= 0.5).float() == labels).float()  # [N]
    edges = torch.linspace(0.0, 1.0, bins + 1)  # the standard [0, 1] bins, comparable with published ECEs
    index = torch.bucketize(confidence, edges[1:-1])  # [N] in 0..bins-1
    ece = torch.zeros(())
    for b in range(bins):
        in_bin = index == b
        if in_bin.any():
            ece += in_bin.float().mean() * (confidence[in_bin].mean() - correct[in_bin].mean()).abs()
    return float(ece)


def brier(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float(((probs - labels) ** 2).mean())
