"""Run state without a training loop: what a checkpoint holds is the live objects' own state,
a restore into a fresh trainee gives it back tensor for tensor (and the next step agrees), and
what cannot be resumed is refused by name.

A Trainee is built as `train` builds it, around a 2,313-parameter network, and takes two
optimizer steps on random data (momenta, EMA weights and the fp16 loss scale then differ from
their start); every check reads the live objects (`state_dict()`, the generators themselves).
"""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
import torch

from resnext.files.checkpoint import CheckpointError, save_checkpoint
from resnext.files.model_file import read_model_file
from resnext.models.zoo import get_spec
from resnext.training.config import resolve_config
from resnext.training.distributed import Context
from resnext.training.engine import NonFiniteLoss, train_step
from resnext.training.run_state import (
    Saver,
    class_difference,
    restore,
    rng_state,
    set_rng_state,
    weights_and_meta,
)
from resnext.training.train import _build
from test_resume import assert_equal

CLASSES = ["zero", "one", "two"]
MAIN = Context(rank=0, world=1, local_rank=0, device=torch.device("cpu"))


def config(**overrides):
    base = {"model": "resnext11_1x64d_p2", "batch_size": 4, "ema_decay": 0.5}
    return resolve_config("tiny", base | {"precision": "fp16"} | overrides)


def trainee(cfg, seed: int, steps: int = 2, classes=CLASSES):
    """A trainee as `train` builds it, after `steps` optimizer steps on random data; its
    loss scale grows after every finite step, so the scaler's state moves too."""
    torch.manual_seed(seed)
    spec = get_spec(cfg.model, num_classes=len(classes), in_channels=1)
    t = _build(spec, cfg, MAIN)
    if t.scaler.is_enabled():
        t.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    for s in range(steps):
        x, y = batch(seed * 100 + s, cfg.batch_size, len(classes))
        train_step(t, x, y, cfg, torch.Generator().manual_seed(s))
    return t, spec


def batch(seed: int, n: int, classes: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)


def state_of(t) -> dict:
    """Everything a continuation depends on, read from the live objects."""
    return {
        "model": t.raw.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "scaler": t.scaler.state_dict(),
        "ema": None if t.ema is None else t.ema.module.state_dict(),
        "step": t.step,
        "skipped": t.skipped,
    }


def differs(a, b) -> bool:
    try:
        assert_equal(a, b)
    except AssertionError:
        return True
    return False


@pytest.fixture(scope="module")
def trained():
    cfg = config()
    t, spec = trainee(cfg, seed=1)
    t.skipped = 3  # as if three steps had been skipped for a non-finite loss
    return cfg, t, spec


def test_the_state_really_moved(trained):
    """The fixture is worth testing with: optimizer, scaler and EMA hold non-initial state."""
    cfg, t, spec = trained
    fresh, _ = trainee(cfg, seed=1, steps=0)
    assert t.step == 2 and fresh.step == 0
    assert t.optimizer.state_dict()["state"] and not fresh.optimizer.state_dict()["state"]
    assert t.scaler.get_scale() == 2.0**12  # doubled after each of the two finite steps
    ema, raw = t.ema.module.state_dict(), t.raw.state_dict()
    assert not torch.equal(ema["fc.weight"], raw["fc.weight"])


@pytest.mark.parametrize("ema", [True, False])
def test_the_payload_is_the_live_objects_state(trained, ema):
    cfg, t, spec = trained
    saved_ema = t.ema
    t.ema = t.ema if ema else None
    try:
        saver = Saver(t, spec, cfg, CLASSES, None, best=12.5)
        before = rng_state()
        p = saver.payload(3, 5, {"val_top1_error": 12.5}, [4.0, 1.0, 8.0])
        live = state_of(t)
    finally:
        t.ema = saved_ema
    assert set(p) == {
        "model", "spec", "model_name", "class_names", "preprocessing", "config", "metrics",
        "epoch", "step", "batch", "train_sums", "best_val_top1_error", "skipped_steps",
        "optimizer", "scheduler", "scaler", "ema", "rng",
    }  # fmt: skip
    assert_equal(p["model"], live["model"], "model")
    assert_equal(p["optimizer"], live["optimizer"], "optimizer")
    assert_equal(p["scaler"], live["scaler"], "scaler")
    assert_equal(p["ema"], live["ema"], "ema")
    assert (p["step"], p["skipped_steps"]) == (2, 3)
    assert (p["epoch"], p["batch"], p["train_sums"]) == (3, 5, [4.0, 1.0, 8.0])
    assert p["metrics"] == {"val_top1_error": 12.5} and p["best_val_top1_error"] == 12.5
    assert p["scheduler"] == {"kind": cfg.schedule, "step": 2}
    assert p["spec"] == spec.to_dict() and p["model_name"] == cfg.model
    assert p["class_names"] == CLASSES and p["config"] == cfg.to_dict()
    assert p["preprocessing"] == cfg.preprocessing().to_dict()
    assert_equal(p["rng"], before, "rng")


def test_weights_and_meta_is_the_model_and_what_reads_it(trained):
    cfg, t, spec = trained
    classes = ("a", "b", "c")
    meta = weights_and_meta(t.raw, spec, cfg, classes)
    assert set(meta) == {"model", "spec", "model_name", "class_names", "preprocessing", "config"}
    assert_equal(meta["model"], t.raw.state_dict())
    assert meta["class_names"] == ["a", "b", "c"]  # a list, as torch.load(weights_only) reads


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_save_read_restore_gives_the_state_back_and_the_next_step_agrees(tmp_path, precision):
    cfg = config(precision=precision)
    a, spec = trainee(cfg, seed=1)
    a.skipped = 2
    saver = Saver(a, spec, cfg, CLASSES, tmp_path, best=7.0)
    saver.save("last.pt", 1, 3, {"val_top1_error": 7.0}, [5.0, 2.0, 8.0])
    after_save = draws()  # what every global generator gives next, as saved
    assert saver.last == f"{tmp_path / 'last.pt'} (step 2)"
    saved = read_model_file(tmp_path / "last.pt")
    assert saved["metrics"] == {"val_top1_error": 7.0} and saved["train_sums"] == [5.0, 2.0, 8.0]
    assert (saved["epoch"], saved["batch"], saved["best_val_top1_error"]) == (1, 3, 7.0)
    saver.save("best.pt", 1, 3, None, None)  # only last.pt is named in messages
    assert saver.last == f"{tmp_path / 'last.pt'} (step 2)"

    b, _ = trainee(cfg, seed=2, steps=1)  # other weights, momenta, scale, EMA, step
    assert differs(state_of(a), state_of(b))
    got = restore(b, saved, spec, CLASSES, MAIN)
    epoch, start, sums, best = got
    assert (epoch, start, best) == (1, 3, 7.0)
    assert torch.equal(sums, torch.tensor([5.0, 2.0, 8.0]))
    assert_equal(state_of(b), state_of(a))
    assert draws() == after_save  # the global generators are back where they were saved
    x, y = batch(99, cfg.batch_size, len(CLASSES))
    for t in (a, b):
        train_step(t, x, y, cfg, torch.Generator().manual_seed(7))
    assert_equal(state_of(b), state_of(a))


def test_other_ranks_restore_zero_train_sums(trained, tmp_path):
    """Saved sums are totals over ranks: only rank 0 carries them on, or they would count
    `world` times; an epoch-end checkpoint has none, and a file without `batch` starts at 0."""
    cfg, t, spec = trained
    ckpt = Saver(t, spec, cfg, CLASSES, tmp_path, 0.0).payload(1, 2, None, [3.0, 1.0, 4.0])
    for rank, want in ((0, [3.0, 1.0, 4.0]), (1, [0.0, 0.0, 0.0]), (3, [0.0, 0.0, 0.0])):
        ctx = Context(rank=rank, world=4, local_rank=rank, device=torch.device("cpu"))
        b, _ = trainee(cfg, seed=1, steps=0)
        sums = restore(b, ckpt, spec, CLASSES, ctx)[2]
        assert sums.dtype == torch.float32 and sums.tolist() == want
    del ckpt["batch"], ckpt["skipped_steps"]
    ckpt["train_sums"] = None
    b, _ = trainee(cfg, seed=1, steps=0)
    assert restore(b, ckpt, spec, CLASSES, MAIN)[1:3] == (0, None) and b.skipped == 0


def test_a_checkpoint_without_ema_leaves_a_runs_new_ema_as_built(trained):
    """A run that turns EMA on when resuming keeps its fresh average (a copy of its weights
    at build time); one without EMA ignores the saved average."""
    cfg, t, spec = trained
    plain = Saver(t, spec, cfg, CLASSES, None, 0.0).payload(1, 0, None, None)
    plain["ema"] = None
    b, _ = trainee(cfg, seed=4, steps=0)
    before = {k: v.clone() for k, v in b.ema.module.state_dict().items()}
    restore(b, plain, spec, CLASSES, MAIN)
    assert_equal(b.ema.module.state_dict(), before)
    b.ema = None
    full = Saver(t, spec, cfg, CLASSES, None, 0.0).payload(1, 0, None, None)
    restore(b, full, spec, CLASSES, MAIN)
    assert_equal(b.raw.state_dict(), t.raw.state_dict())


def test_a_spec_without_some_keys_still_resumes(trained):
    """Keys the checkpoint's spec lacks (an older file, or none at all) are not a mismatch."""
    cfg, t, spec = trained
    for theirs in ({k: v for k, v in spec.to_dict().items() if k != "residual"}, None):
        ckpt = Saver(t, spec, cfg, CLASSES, None, 0.0).payload(1, 0, None, None)
        ckpt["spec"] = theirs
        b, _ = trainee(cfg, seed=5, steps=0)
        restore(b, ckpt, spec, CLASSES, MAIN)
        assert_equal(state_of(b), state_of(t))


def refused(t, ckpt, spec, classes, match: str) -> None:
    """`restore` raises naming what differs, and the trainee is left as it was."""
    before = {k: (v.clone() if isinstance(v, torch.Tensor) else v)
              for k, v in state_of(t)["model"].items()}  # fmt: skip
    step, rng = t.step, torch.get_rng_state()
    with pytest.raises(CheckpointError, match=match):
        restore(t, ckpt, spec, classes, MAIN)
    assert_equal(t.raw.state_dict(), before)
    assert t.step == step
    assert torch.equal(torch.get_rng_state(), rng)


def test_another_architecture_is_refused_naming_both(trained):
    cfg, t, spec = trained
    ckpt = Saver(t, spec, cfg, CLASSES, None, 0.0).payload(1, 0, None, None)
    ckpt["spec"] |= {"cardinality": 2, "base_width": 32, "form": "b"}
    b, _ = trainee(cfg, seed=6, steps=0)
    have = "cardinality=2, base_width=32, form='b'"
    want = "cardinality=1, base_width=64, form='c'"
    refused(b, ckpt, spec, CLASSES, f"cannot resume: the checkpoint holds {have}; "
            f"this run needs {want}$")  # fmt: skip
    # Other classes too: both named.
    why = class_difference(CLASSES, ["zero", "one", "three"])
    refused(
        b,
        ckpt,
        spec,
        ["zero", "one", "three"],
        re.escape(f"this run needs {want} (classes: {why})"),
    )


@pytest.mark.parametrize(
    "classes",
    [["zero", "one", "tree"], ["one", "zero", "two"], ["zero", "one"], [*CLASSES, "three"]],
)
def test_other_classes_are_refused_naming_them(trained, classes):
    cfg, t, spec = trained
    ckpt = Saver(t, spec, cfg, CLASSES, None, 0.0).payload(1, 0, None, None)
    b, _ = trainee(cfg, seed=6, steps=0)
    why = class_difference(CLASSES, classes)
    assert why
    refused(b, ckpt, spec, classes,
            re.escape(f"cannot resume: the data's classes are not the checkpoint's: {why}") + "$")  # fmt: skip


def test_a_weights_only_file_is_refused(trained, tmp_path):
    cfg, t, spec = trained
    save_checkpoint(tmp_path / "w.pt", weights_and_meta(t.raw, spec, cfg, CLASSES))
    b, _ = trainee(cfg, seed=6, steps=0)
    refused(b, read_model_file(tmp_path / "w.pt"), spec, CLASSES,
            "the checkpoint holds no training state; this run needs optimizer, step, rng$")  # fmt: skip


def test_non_finite_weights_are_never_saved(tmp_path):
    cfg = config(precision="fp32")
    t, spec = trainee(cfg, seed=1, steps=1)
    saver = Saver(t, spec, cfg, CLASSES, tmp_path, 0.0)
    for bad in (float("nan"), float("inf")):
        with torch.no_grad():
            t.raw.fc.bias[1] = bad
        with pytest.raises(NonFiniteLoss, match="non-finite weights at step 1$"):
            saver.save("last.pt", 1, 0, None, None)
        assert not list(tmp_path.iterdir()) and saver.last == "none"


def names(classes, most: int = 8) -> str:
    """The message's list: the first 8 quoted, then how many more."""
    shown = ", ".join(f"'{c}'" for c in classes[:most])
    return shown + (f" and {len(classes) - most} more" if len(classes) > most else "")


@pytest.mark.parametrize("gone", [0, 1, 8, 9, 13])
@pytest.mark.parametrize("new", [0, 2, 8, 11])
def test_class_difference_names_gone_and_new_classes(gone, new):
    shared = [f"s{i}" for i in range(5)]
    saved = shared + [f"g{i}" for i in range(gone)]
    classes = [f"n{i}" for i in range(new)] + shared[::-1]  # order plays no part here
    got = class_difference(saved, classes)
    parts = ([f"only the checkpoint has {names(saved[5:])}"] if gone else []) + (
        [f"only the data has {names(classes[:new])}"] if new else []
    )
    if parts:
        assert got == "; ".join(parts)
    else:
        assert got == f"the same classes in another order ({names(saved)} vs {names(classes)})"


@pytest.mark.parametrize("n", [1, 3, 8, 9, 20])
def test_class_difference_same_or_reordered(n):
    classes = [f"c{i:02d}" for i in range(n)]
    assert class_difference(classes, list(classes)) == ""
    assert class_difference(tuple(classes), classes) == ""  # a tuple from a file is the same
    assert class_difference(None, classes) == ""  # a checkpoint that names no classes
    if n > 1:
        turned = classes[1:] + classes[:1]
        want = f"the same classes in another order ({names(classes)} vs {names(turned)})"
        assert class_difference(classes, turned) == want
    assert class_difference(classes, classes + ["x"]) == "only the data has 'x'"


def draws() -> tuple:
    """One draw from each global generator, including the cached Gaussians of Python and
    numpy (a Box-Muller / polar pair: every other draw comes from the saved state's cache)."""
    return (
        random.random(), random.gauss(0, 1), np.random.randint(0, 2**31, 4).tolist(),
        np.random.standard_normal(), torch.rand(3).tolist(), torch.randint(0, 2**31, (4,)).tolist(),
        [torch.rand(2, device=f"cuda:{d}").tolist() for d in range(torch.cuda.device_count())],
    )  # fmt: skip


@pytest.mark.parametrize("through_file", [False, True])
def test_rng_state_round_trip_replays_every_generator(tmp_path, through_file):
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leave a cached Gaussian in both
    np.random.standard_normal()
    state = rng_state()
    if through_file:  # as a checkpoint holds it: torch.load(weights_only=True) reads it
        save_checkpoint(tmp_path / "rng.pt", {"rng": state})
        state = read_model_file(tmp_path / "rng.pt")["rng"]
    first = draws()
    draws()
    assert draws() != first  # the generators moved on
    set_rng_state(state)
    assert draws() == first
    # Each generator alone: restoring puts back that one's state, not another's.
    set_rng_state(state)
    assert random.getstate() == _python(state)
    keys = np.random.get_state()
    want = state["numpy"]
    assert keys[0] == want[0] and np.array_equal(keys[1], want[1].numpy())
    assert keys[1].dtype == np.uint32 and tuple(keys[2:]) == tuple(want[2:])
    assert torch.equal(torch.get_rng_state(), state["torch"])


def _python(state):
    version, internal, gauss = state["python"]
    return version, tuple(internal), gauss


def test_rng_state_is_plain_values_of_the_live_generators():
    random.seed(11)
    np.random.seed(2**32 - 1)  # keys above 2**31: an int32 copy would wrap them
    torch.manual_seed(5)
    state = rng_state()
    assert _python(state) == random.getstate()
    name, keys, *rest = np.random.get_state()
    assert state["numpy"][0] == name and state["numpy"][2:] == rest
    assert state["numpy"][1].tolist() == keys.tolist() and keys.max() >= 2**31
    assert state["numpy"][1].dtype == torch.int64  # exact integers in the file
    assert torch.equal(state["torch"], torch.get_rng_state())
    want = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    assert len(state["cuda"]) == len(want)
    assert all(torch.equal(a, b) for a, b in zip(state["cuda"], want))
