"""The seed: one seed gives one run, bit for bit; two seeds give two runs, differing in each
random choice a run makes (initial weights, data order, augmentation).

Every step is observed from outside the training loop (a spy on `train_step`), so the checks
hold whatever the code between seed and step does.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import resnext.data.batches
import resnext.training.engine
from resnext.files.model_file import read_model_file
from resnext.training.config import resolve_config
from resnext.training.train import train

# Two steps of 16 images; crop_flip with padding 1 and flips, so every draw shows.
CFG = resolve_config(
    "tiny", {"epochs": 1, "train_limit": 32, "val_limit": 16, "hflip": True, "deterministic": True}
)


@pytest.fixture
def steps(monkeypatch):
    """Record each run's initial weights and the inputs and labels of each of its steps."""
    runs = []
    real = resnext.training.engine.train_step

    def spy(t, x, y, cfg, gen):
        if t.step == 0:
            init = {k: v.clone() for k, v in t.raw.state_dict().items()}
            runs.append({"init": init, "x": [], "y": []})
        runs[-1]["x"].append(x.clone())
        runs[-1]["y"].append(y.clone())
        return real(t, x, y, cfg, gen)

    monkeypatch.setattr(resnext.training.engine, "train_step", spy)
    return runs


def _run(tmp_path, name: str, seed: int) -> dict:
    train(dataclasses.replace(CFG, seed=seed), tmp_path / name)
    return read_model_file(tmp_path / name / "last.pt")["model"]


def _weights_differ(a: dict, b: dict) -> bool:
    convs = [k for k in a if k.endswith("conv1.weight") or k == "fc.weight"]
    return bool(convs) and all(not torch.equal(a[k], b[k]) for k in convs)


def test_one_seed_gives_one_run_and_two_seeds_two(tmp_path, steps):
    final = [_run(tmp_path, name, seed) for name, seed in (("a", 1), ("again", 1), ("b", 2))]
    a, again, b = steps
    assert len(a["x"]) == len(b["x"]) == 2
    # One seed: the same start, the same batches, the same end.
    assert all(torch.equal(a["init"][k], again["init"][k]) for k in a["init"])
    assert all(torch.equal(u, v) for u, v in zip(a["x"] + a["y"], again["x"] + again["y"]))
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    # Two seeds: other initial weights (every conv and the classifier), another data order.
    assert _weights_differ(a["init"], b["init"])
    assert not all(torch.equal(u, v) for u, v in zip(a["y"], b["y"]))
    assert _weights_differ(final[0], final[2])


def test_two_seeds_draw_other_augmentations_for_the_same_images(tmp_path, steps, monkeypatch):
    """With the data order held fixed (every epoch in file order), the seed still changes the
    crops and flips of the very same images."""
    monkeypatch.setattr(
        resnext.data.batches, "epoch_permutation", lambda n, seed, epoch: torch.arange(n)
    )
    _run(tmp_path, "a", 1)
    _run(tmp_path, "b", 2)
    a, b = steps
    assert all(torch.equal(u, v) for u, v in zip(a["y"], b["y"]))  # the same images
    for u, v in zip(a["x"], b["x"]):
        differs = (u != v).flatten(1).any(1)
        assert differs.float().mean() > 0.5  # most images got another crop or flip
