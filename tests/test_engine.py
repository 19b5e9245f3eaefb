"""Schedules, optimiser groups, EMA, one training step in every precision, evaluation counts."""

import dataclasses
import math

import pytest
import torch

from resnext.data.batches import step_generator
from resnext.models.model import build_model
from resnext.models.zoo import ModelSpec
from resnext.training.config import resolve_config
from resnext.training.engine import Trainee, evaluate, train_step
from resnext.training.optim import EMA, build_optimizer, lr_at, peak_lr, set_lr

SPEC = ModelSpec("cifar", "bottleneck", (1, 1, 1), 2, 4, num_classes=5, in_channels=1)


def test_step_schedule_divides_by_ten_at_milestones():
    cfg = resolve_config("imagenet", {"batch_size": 512})
    assert peak_lr(cfg) == pytest.approx(0.2)  # linear scaling from 0.1 at 256
    lrs = [lr_at(cfg, e * 10, 10) for e in (0, 29, 30, 59, 60, 90, 99)]
    assert lrs == pytest.approx([0.2, 0.2, 0.02, 0.02, 0.002, 0.0002, 0.0002])


def test_cosine_with_warmup():
    cfg = resolve_config("digits", {"epochs": 10, "warmup_epochs": 2, "lr_batch": 64})
    assert lr_at(cfg, 0, 10) == pytest.approx(0.1 / 20)
    assert lr_at(cfg, 19, 10) == pytest.approx(0.1)
    assert lr_at(cfg, 60, 10) == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(cfg, 99, 10) < 1e-3


def test_no_weight_decay_on_norm_and_bias():
    model = build_model(SPEC)
    groups = build_optimizer(
        model, resolve_config("digits", {"no_wd_norm_bias": True})
    ).param_groups
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    assert all(p.ndim > 1 for p in groups[0]["params"]) and all(
        p.ndim == 1 for p in groups[1]["params"]
    )
    assert groups[0]["nesterov"]


def test_ema_moves_towards_weights():
    model = build_model(SPEC)
    ema = EMA(model, 0.9)
    before = ema.module.fc.weight.clone()
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.module.fc.weight, before + 0.1, atol=1e-6)


def _trainee(cfg):
    torch.manual_seed(0)
    model = build_model(SPEC)
    scaler = torch.amp.GradScaler("cpu", enabled=cfg.precision == "fp16")
    return Trainee(model, model, build_optimizer(model, cfg), scaler)


@pytest.mark.parametrize(
    "extra",
    [
        {"precision": "bf16", "channels_last": True},
        {"precision": "fp16", "clip_grad": 1.0},
        {"mixup": 0.2, "cutmix": 1.0, "label_smoothing": 0.1},
    ],
)
def test_train_step_options(extra):
    cfg = resolve_config("tiny", {"batch_size": 8, "accum_steps": 2, **extra})
    t = _trainee(cfg)
    before = t.raw.conv1.weight.clone()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 5, (8,))
    loss, wrong, n = train_step(t, x, y, cfg, torch.Generator().manual_seed(0)).tolist()
    assert n == 8 and 0 <= wrong <= 8 and math.isfinite(loss)
    assert t.step == 1 and not torch.equal(before, t.raw.conv1.weight)


def test_accumulation_equals_one_big_batch_without_bn_coupling():
    """Two micro-batches of 4 give the gradient of the batch of 8 (BN in eval mode here)."""
    cfg = resolve_config("tiny", {"batch_size": 8, "weight_decay": 0.0, "momentum": 0.0})
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 5, (8,))
    results = []
    for accum in (1, 2):
        t = _trainee(cfg)
        t.model.eval()  # BN with fixed statistics: both batchings compute the same function
        train_step(t, x, y, dataclasses.replace(cfg, accum_steps=accum), None)
        results.append(t.raw.fc.weight.detach().clone())
    assert torch.allclose(results[0], results[1], atol=1e-6)


def test_evaluate_counts_top1_and_top5():
    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return x.flatten(1)[:, :6] + self.w

    logits = torch.tensor([[6.0, 5, 4, 3, 2, 1], [1, 6, 5, 4, 3, 2], [1, 2, 3, 4, 5, 6]])
    y = torch.tensor([0, 2, 0])  # top-1 right, top-5 right, both wrong
    ten = logits.view(3, 1, 6, 1, 1).expand(3, 10, 6, 1, 1)
    for x in (logits.view(3, 6, 1, 1), ten):
        m = evaluate(Fixed(), [(x, y)])
        assert m["images"] == 3
        assert m["top1_error"] == pytest.approx(200 / 3) and m["top5_error"] == pytest.approx(
            100 / 3
        )


# ---------------------------------------------------------------------------------------------
# train_step against a step written out by hand: smoothed cross-entropy from its definition,
# micro-batch gradients summed with weight 1/accum, clipping by the global norm, plain SGD.


def _smoothed_ce(logits, target, smoothing):
    """Cross-entropy with label smoothing from its definition: the target distribution
    (1 - e) q + e / K against log-softmax; `target` is class indices or a distribution."""
    k = logits.shape[1]
    q = target if target.ndim == 2 else torch.nn.functional.one_hot(target, k).double()
    q = (1 - smoothing) * q.double() + smoothing / k
    return -(q * logits.double().log_softmax(1)).sum(1).mean()


def _reference_step(model, optimizer, x, y, cfg, mixed=None):
    """What one optimizer step must do; returns [loss sum, wrong, images] as numpy would."""
    loss_sum, wrong = 0.0, 0
    xs, ys = x.chunk(cfg.accum_steps), y.chunk(cfg.accum_steps)
    for i, (xc, yc) in enumerate(zip(xs, ys)):
        inputs, target = (xc, yc) if mixed is None else mixed[i]
        logits = model(inputs)
        loss = _smoothed_ce(logits, target, cfg.label_smoothing)
        (loss / cfg.accum_steps).backward()
        loss_sum += loss.item() * len(yc)
        wrong += int((logits.detach().numpy().argmax(1) != yc.numpy()).sum())
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if cfg.clip_grad > 0:
        norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
        if norm > cfg.clip_grad:
            for g in grads:
                g.mul_(cfg.clip_grad / (norm + 1e-6))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return [loss_sum, wrong, len(y)]


def _state(model):
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


@pytest.mark.parametrize(
    "extra",
    [
        {"accum_steps": 1},
        {"accum_steps": 2, "label_smoothing": 0.1},
        {"accum_steps": 4, "label_smoothing": 0.3, "clip_grad": 0.05},
        {"accum_steps": 1, "clip_grad": 100.0},  # a bound the norm stays under: no clipping
    ],
)
def test_train_step_is_the_step_written_out_by_hand(extra):
    cfg = resolve_config("tiny", {"batch_size": 8, **extra})
    t = _trainee(cfg)
    ref = _trainee(cfg)  # same seed: same initial weights
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 1, 8, 8, generator=gen), torch.randint(0, 5, (8,), generator=gen)
    for _ in range(2):  # the second step also checks that gradients did not carry over
        got = train_step(t, x, y, cfg, None).tolist()
        want = _reference_step(ref.model, ref.optimizer, x, y, cfg)
        assert got[0] == pytest.approx(want[0], rel=1e-5)
        assert got[1:] == want[1:]
    assert t.step == 2 and t.skipped == 0
    ours, theirs = _state(t.raw), _state(ref.raw)
    assert ours.keys() == theirs.keys()
    for name in ours:  # weights and BN running statistics
        assert torch.allclose(ours[name], theirs[name], atol=1e-6), name


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_train_step_trains_on_the_mixed_batch_with_soft_targets(mixup, cutmix):
    """Mixup or CutMix on (either alone turns mixing on): the model sees mix()'s images
    (drawn from the step's generator, micro-batch by micro-batch) against its soft targets;
    errors are still counted against the true labels."""
    from resnext.data.transforms import mix

    cfg = resolve_config(
        "tiny",
        {"batch_size": 8, "accum_steps": 2, "mixup": mixup, "cutmix": cutmix,
         "label_smoothing": 0.1},
    )  # fmt: skip
    t, ref = _trainee(cfg), _trainee(cfg)
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 5
    draw = torch.Generator().manual_seed(3)
    mixed = [mix(xc, yc, 5, mixup, cutmix, draw) for xc, yc in zip(x.chunk(2), y.chunk(2))]
    assert not torch.equal(torch.cat([m[0] for m in mixed]), x)  # the mixing shows
    got = train_step(t, x, y, cfg, torch.Generator().manual_seed(3)).tolist()
    want = _reference_step(ref.model, ref.optimizer, x, y, cfg, mixed)
    assert got[0] == pytest.approx(want[0], rel=1e-5) and got[1:] == want[1:]
    for name, p in _state(t.raw).items():
        assert torch.allclose(p, _state(ref.raw)[name], atol=1e-6), name


def test_train_step_updates_the_ema_after_the_weights():
    cfg = resolve_config("tiny", {"batch_size": 8})
    t = _trainee(cfg)
    t.ema = EMA(t.raw, 0.75)
    before = {k: v.clone() for k, v in t.ema.module.state_dict().items()}
    train_step(t, torch.randn(8, 1, 8, 8), torch.randint(0, 5, (8,)), cfg, None)
    after = t.raw.state_dict()
    for name, e in t.ema.module.state_dict().items():
        if e.is_floating_point() and name in dict(t.raw.named_parameters()):
            want = 0.75 * before[name] + 0.25 * after[name]
        else:  # BN statistics and counters are copied
            want = after[name]
        assert torch.allclose(e, want, atol=1e-6), name


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("accum", [1, 2])
def test_a_non_finite_loss_changes_nothing(bad, accum):
    """skip_nonfinite: weights, BN statistics and the EMA stay as they were, the step counts,
    the skip is counted, no sums are added; without it: NonFiniteLoss before any weight moves."""
    from resnext.training.engine import NonFiniteLoss

    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 5, (8,))
    x[-1, 0, 0, 0] = bad  # one image in the last micro-batch
    for skip in (True, False):
        cfg = resolve_config("tiny", {"batch_size": 8, "accum_steps": accum,
                                      "skip_nonfinite": skip})  # fmt: skip
        t = _trainee(cfg)
        t.ema = EMA(t.raw, 0.5)
        before = {k: v.clone() for k, v in _state(t.raw).items()}
        ema_before = {k: v.clone() for k, v in t.ema.module.state_dict().items()}
        if skip:
            for k in (1, 2):
                assert train_step(t, x, y, cfg, None).tolist() == [0.0, 0.0, 0.0]
                assert (t.step, t.skipped) == (k, k)
        else:
            t.step = 6
            with pytest.raises(NonFiniteLoss, match=r"^non-finite loss \((nan|inf)\) at step 7$"):
                train_step(t, x, y, cfg, None)
        assert all(p.grad is None for p in t.raw.parameters())
        # The weights never change; BN statistics are put back when the run goes on (a run
        # that stops saves nothing after the failing step).
        kept = _state(t.raw) if skip else dict(t.raw.named_parameters())
        for name, v in kept.items():
            assert torch.equal(v, before[name]), name
        for name, v in t.ema.module.state_dict().items():
            assert torch.equal(v, ema_before[name]), name
    # and the next finite step trains as a fresh one would
    cfg = resolve_config("tiny", {"batch_size": 8, "skip_nonfinite": True})
    t, ref = _trainee(cfg), _trainee(cfg)
    train_step(t, x, y, cfg, None)
    x[-1, 0, 0, 0] = 0.0
    train_step(t, x, y, cfg, None)
    _reference_step(ref.model, ref.optimizer, x, y, cfg)
    for name, v in _state(t.raw).items():
        if v.is_floating_point():
            assert torch.allclose(v, _state(ref.raw)[name], atol=1e-6), name


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_model_sees_the_layout_asked_for(channels_last):
    from resnext.training.engine import to_device

    x = torch.randn(2, 3, 5, 4)
    out = to_device(x, torch.device("cpu"), channels_last)
    assert torch.equal(out, x)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    for other in (torch.randn(2, 10, 3, 5, 4), torch.randn(2, 7)):  # not 4-d: left as it is
        assert to_device(other, torch.device("cpu"), True).is_contiguous()
    seen = []
    cfg = resolve_config("tiny", {"batch_size": 8, "channels_last": channels_last})
    model = build_model(dataclasses.replace(SPEC, in_channels=3))  # one channel has one layout
    t = Trainee(model, model, build_optimizer(model, cfg), torch.amp.GradScaler("cpu"))
    t.raw.conv1.register_forward_pre_hook(lambda m, a: seen.append(a[0].stride()))
    x = torch.randn(8, 3, 8, 8)
    train_step(t, x, torch.randint(0, 5, (8,)), cfg, None)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert seen == [x.contiguous(memory_format=layout).stride()]


def test_train_one_epoch_sets_each_steps_rate_and_sums_over_the_epoch():
    """The rate of step s is lr_at(s) (times the group's scale) when the step runs; the epoch's
    loss and error are means over its images; a resumed epoch (start, sums) ends with the
    same sums and weights as the uninterrupted one."""
    import io

    from resnext.training.engine import train_one_epoch
    from resnext.training.progress import Progress

    cfg = resolve_config(
        "tiny", {"batch_size": 4, "epochs": 3, "warmup_epochs": 1, "mixup": 0.5, "seed": 5}
    )
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 1, 8, 8, generator=gen), torch.randint(0, 5, (4,), generator=gen))
            for _ in range(5)]  # fmt: skip

    def run(start, sums, t):
        rates, step_sums = [], []

        def on_step(batch, s):
            rates.append(t.optimizer.param_groups[0]["lr"])
            step_sums.append((batch, s.clone()))

        quiet = Progress(5, "epoch", enabled=False, stream=io.StringIO())
        metrics = train_one_epoch(t, data[start:], cfg, 1, 5, quiet, start, sums, on_step)
        return metrics, rates, step_sums

    t = _trainee(cfg)
    t.step = 5  # epoch 1 of 5 steps an epoch
    metrics, rates, step_sums = run(0, None, t)
    assert rates == pytest.approx([lr_at(cfg, s, 5) for s in range(5, 10)])
    assert [b for b, _ in step_sums] == [1, 2, 3, 4, 5]
    loss, wrong, n = step_sums[-1][1].tolist()
    assert n == 20
    assert metrics["train_loss"] == pytest.approx(loss / 20)
    assert metrics["train_top1_error"] == pytest.approx(100 * wrong / 20)
    # each step's sums are its own step's, added (recomputed with the same draws)
    u = _trainee(cfg)
    u.step = 5
    total = torch.zeros(3)
    for b, (x, y) in enumerate(data):
        set_lr(u.optimizer, lr_at(cfg, u.step, 5))
        total += train_step(u, x, y, cfg, step_generator(cfg.seed + 1, 1, b))
        assert torch.allclose(step_sums[b][1], total), b
    # resume after step 2 with its sums
    r = _trainee(cfg)
    for b, (x, y) in enumerate(data[:2]):
        r.step = 5 + b
        set_lr(r.optimizer, lr_at(cfg, r.step, 5))
        train_step(r, x, y, cfg, step_generator(cfg.seed + 1, 1, b))
    resumed, _, resumed_sums = run(2, step_sums[1][1].clone(), r)
    assert [b for b, _ in resumed_sums] == [3, 4, 5]
    assert torch.allclose(resumed_sums[-1][1], step_sums[-1][1])
    assert resumed["train_loss"] == pytest.approx(metrics["train_loss"])
    for name, v in _state(r.raw).items():
        assert torch.allclose(v, _state(t.raw)[name], atol=1e-6), name


def test_train_one_epoch_reports_running_means_and_images_per_second(monkeypatch):
    """What the progress line and the epoch's metrics say, on a clock that ticks 0.25 s a read:
    every second step and the last, running means of loss and error, images per second."""
    import io
    import itertools

    from resnext.training import engine
    from resnext.training.progress import Progress

    cfg = resolve_config("tiny", {"batch_size": 4, "epochs": 1})
    data = [(torch.randn(4, 1, 8, 8), torch.randint(0, 5, (4,))) for _ in range(3)]
    shown, sums = [], []
    progress = Progress(3, "epoch", every=2, stream=io.StringIO(),
                        sink=lambda done, values: shown.append((done, values)))  # fmt: skip
    clock = itertools.count(100.0, 0.25)
    monkeypatch.setattr(engine.time, "perf_counter", lambda: next(clock))
    t = _trainee(cfg)
    metrics = engine.train_one_epoch(
        t, data, cfg, 0, 3, progress, on_step=lambda b, s: sums.append(s.clone())
    )
    assert [done for done, _ in shown] == [2, 3]
    for (done, values), ticks in zip(shown, (1, 2)):
        loss, wrong, n = sums[done - 1].tolist()
        assert values["loss"] == pytest.approx(loss / n)
        assert values["err"] == pytest.approx(100 * wrong / n)
        assert values["img_s"] == pytest.approx(4 * done / (0.25 * ticks))
    assert metrics["seconds"] == 0.75  # the start, two progress reads, the end
    assert metrics["images_per_second"] == pytest.approx(12 / 0.75)
