"""`engine.evaluate` against numpy: top-1 / top-5 error from argsort over random logits, the mean
cross-entropy from a numpy log-softmax, ten-crop scoring as the mean of the crops' softmax, over
batches of unequal size. With tied logits the order among equals is torch's choice, so there the
counts are checked to lie between the sure hits and the sure-or-tied ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from resnext.training.engine import evaluate


class Scores(nn.Module):
    """Logits = the input averaged over its pixels; records how it was called."""

    def __init__(self, with_parameter: bool = True) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(())) if with_parameter else None
        self.calls: list[dict] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append({
            "training": self.training,
            "grad": torch.is_grad_enabled(),
            "autocast": torch.is_autocast_enabled("cpu"),
            "channels_last": x.is_contiguous(memory_format=torch.channels_last)
            and not x.is_contiguous(),
            "shape": tuple(x.shape),
        })  # fmt: skip
        logits = x.mean((2, 3))
        return logits if self.w is None else logits + self.w


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _batches(x: np.ndarray, y: np.ndarray, sizes: list[int]):
    """Unequal batches; each logit vector is spread over a 2x2 image (mean = the logits)."""
    start = 0
    for size in sizes:
        xb = torch.from_numpy(x[start : start + size]).float()
        yield (
            xb[..., None, None].expand(*xb.shape, 2, 2).contiguous(),
            torch.from_numpy(y[start : start + size]),
        )
        start += size


def _reference(scores: np.ndarray, log_probs: np.ndarray, y: np.ndarray) -> dict:
    order = np.argsort(-scores, axis=1, kind="stable")
    return {
        "loss": -log_probs[np.arange(len(y)), y].mean(),
        "top1": 100 * np.mean(order[:, 0] != y),
        "top5": 100 * np.mean(~(order[:, :5] == y[:, None]).any(1)),
    }


@pytest.mark.parametrize("classes", [5, 7, 10, 100])
@pytest.mark.parametrize("sizes", [[13], [5, 1, 9, 4]])
def test_top1_top5_and_loss_are_numpy_s(classes, sizes):
    rng = np.random.default_rng(classes + len(sizes))
    n = sum(sizes)
    logits = rng.normal(0, 2, (n, classes))
    y = rng.integers(0, classes, n)
    # make some top-1 and some top-5 hits certain, so every count is exercised
    y[:3] = logits[:3].argmax(1)
    y[3:6] = np.argsort(-logits[3:6], axis=1)[:, 3]
    ref = _reference(logits, _log_softmax(logits), y)
    m = evaluate(Scores(), _batches(logits, y, sizes))
    assert m["images"] == n
    assert m["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert m["top1_error"] == pytest.approx(ref["top1"], abs=1e-9)
    assert m["top5_error"] == pytest.approx(ref["top5"], abs=1e-9)
    assert 0 < m["top5_error"] < m["top1_error"] < 100 or classes == 5


@pytest.mark.parametrize("classes", [6, 12])
def test_ten_crop_scores_by_the_mean_of_the_crops_softmax(classes):
    rng = np.random.default_rng(classes)
    n = 11
    crops = rng.normal(0, 3, (n, 10, classes))
    y = rng.integers(0, classes, n)
    probs = np.exp(_log_softmax(crops)).mean(1)
    ref = _reference(probs, np.log(probs), y)
    model = Scores()
    x = torch.from_numpy(crops).float()[..., None, None].expand(n, 10, classes, 2, 2)
    m = evaluate(model, [(x[:4], torch.from_numpy(y[:4])), (x[4:], torch.from_numpy(y[4:]))])
    assert m["images"] == n  # images, not crops
    assert m["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert m["top1_error"] == pytest.approx(ref["top1"], abs=1e-9)
    assert m["top5_error"] == pytest.approx(ref["top5"], abs=1e-9)
    assert [c["shape"][0] for c in model.calls] == [40, 70]  # crops go through as one batch


@pytest.mark.parametrize("classes", [2, 4])
def test_fewer_than_five_classes_have_no_top5(classes):
    rng = np.random.default_rng(classes)
    logits, y = rng.normal(size=(9, classes)), rng.integers(0, classes, 9)
    m = evaluate(Scores(), _batches(logits, y, [9]))
    assert m["top5_error"] is None
    assert m["top1_error"] == pytest.approx(100 * np.mean(logits.argmax(1) != y))


@pytest.mark.parametrize("k", [1, 5])
def test_tied_logits_count_between_the_sure_hits_and_the_possible_ones(k):
    rng = np.random.default_rng(k)
    n, classes = 200, 8
    logits = rng.integers(0, 3, (n, classes)).astype(np.float64)  # many ties
    y = rng.integers(0, classes, n)
    label = logits[np.arange(n), y][:, None]
    above, level = (logits > label).sum(1), (logits == label).sum(1)  # level counts the label
    sure = np.sum(above + level <= k)  # in the top k whatever the order among equals
    possible = np.sum(above < k)
    assert sure < possible  # the draw has ambiguous cases
    m = evaluate(Scores(), _batches(logits, y, [64, 64, 72]))
    hits = n * (1 - m["top1_error" if k == 1 else "top5_error"] / 100)
    assert sure - 1e-6 <= hits <= possible + 1e-6


@pytest.mark.parametrize("with_parameter", [True, False])
@pytest.mark.parametrize("precision, channels_last", [("fp32", False), ("bf16", True)])
def test_evaluation_runs_in_eval_mode_without_gradients(with_parameter, precision, channels_last):
    """A model without parameters (an exported file) is evaluated on the CPU."""
    model = Scores(with_parameter).train()
    logits, y = np.eye(6)[[0, 1, 2, 3]] * 5, np.array([0, 1, 5, 3])
    m = evaluate(model, _batches(logits, y, [4]), precision, channels_last)
    assert m["top1_error"] == pytest.approx(25.0)
    assert model.calls == [{"training": False, "grad": False, "autocast": precision == "bf16",
                            "channels_last": channels_last, "shape": (4, 6, 2, 2)}]  # fmt: skip


@pytest.mark.parametrize("right", [True, False])
def test_a_single_image_is_all_right_or_all_wrong(right):
    logits = np.array([[0.1, 3.0, 0.2, 0.3, 0.4, 0.5, 0.6]])
    y = np.array([1 if right else 0])
    m = evaluate(Scores(), _batches(logits, y, [1]))
    assert m["images"] == 1
    assert m["top1_error"] == (0.0 if right else 100.0)
    assert m["top5_error"] == (0.0 if right else 100.0)  # label 0 has the lowest logit
    assert m["loss"] == pytest.approx(-_log_softmax(logits)[0, y[0]])
