"""Fine-tuning: `train --init`, a new classifier, frozen stages bit for bit, the backbone's lr.

The pretrained file is one the test writes (a ResNeXt-11 for 8x8 grey digits with trained-looking
BN statistics, its own preprocessing and seven class names), so the runs take seconds.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

import resnext
from resnext.cli import main
from resnext.data.preprocessing import Preprocessing
from resnext.files.model_file import read_model_file, save_model_file
from resnext.training.config import resolve_config
from resnext.training.finetune import finetune_config, freeze_stages
from resnext.training.optim import build_optimizer, set_lr

from conftest import randomize_bn

MODEL = "resnext11_4x16d"  # the tiny recipe's model: three stages
PRE = Preprocessing(8, 8, "bilinear", (0.25,), (0.5,), channels=1)


def _source(path, num_classes=7, name=MODEL):
    model = randomize_bn(resnext.create_model(name, num_classes=num_classes, in_channels=1))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.num_batches_tracked.fill_(1234)
    names = [f"class{i}" for i in range(num_classes)]
    save_model_file(path, {"model": model.state_dict(), "spec": model.spec.to_dict(),
                           "model_name": name, "class_names": names,
                           "preprocessing": PRE.to_dict()})  # fmt: skip
    return path, model.state_dict()


@pytest.fixture
def source(tmp_path):
    return _source(tmp_path / "pre.pt")


def _train(tmp_path, *args) -> int:
    run = tmp_path / "run"
    base = ["train", "--recipe", "tiny", "--epochs", "1", "--out", str(run)]
    return main(base + ["--set", "train_limit=64", "--set", "val_limit=32", *args])


def test_init_loads_all_but_a_new_classifier_and_takes_the_preprocessing(tmp_path, source, caplog):
    path, want = source
    with caplog.at_level(logging.INFO):
        assert _train(tmp_path, "--init", str(path)) == 0
    assert "re-initialised fc.weight, fc.bias (7 classes in the file, 10 here)" in caplog.text
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["init"] == str(path)
    assert (cfg["mean"], cfg["std"], cfg["eval_resize"], cfg["eval_crop"]) == ([0.25], [0.5], 8, 8)
    # Only what --set does not give comes from the weights.
    explicit = finetune_config("tiny", {"init": str(path), "mean": "0.3", "eval_crop": "8"})
    assert explicit.mean == (0.3,) and explicit.std == (0.5,)


def test_freeze_stages_keeps_the_files_tensors_bit_for_bit(tmp_path, source):
    path, want = source
    assert _train(tmp_path, "--init", str(path), "--set", "freeze_stages=2") == 0
    got = read_model_file(tmp_path / "run" / "last.pt")["model"]
    frozen = [k for k in want if k.split(".")[0] in ("conv1", "bn1", "layer1", "layer2")]
    assert any("running_var" in k for k in frozen) and any("num_batches" in k for k in frozen)
    assert all(torch.equal(got[k], want[k]) for k in frozen)
    assert not torch.equal(got["layer3.0.conv1.weight"], want["layer3.0.conv1.weight"])
    assert not torch.equal(got["layer3.0.bn1.running_mean"], want["layer3.0.bn1.running_mean"])
    assert got["fc.weight"].shape == (10, want["fc.weight"].shape[1])


def test_head_only_and_a_fine_tuning_run_resumes(tmp_path, source):
    path, want = source
    assert _train(tmp_path, "--init", str(path), "--set", "freeze_stages=3") == 0
    got = read_model_file(tmp_path / "run" / "last.pt")["model"]
    assert all(torch.equal(got[k], v) for k, v in want.items() if not k.startswith("fc."))
    args = ["train", "--resume", str(tmp_path / "run"), "--epochs", "2"]
    assert main(args) == 0  # resumes like any other run (its init is not re-read)
    again = read_model_file(tmp_path / "run" / "last.pt")
    assert again["epoch"] == 2 and not torch.equal(again["model"]["fc.weight"], got["fc.weight"])
    assert torch.equal(again["model"]["layer3.0.conv3.weight"], want["layer3.0.conv3.weight"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resume", "auto"], "--init starts a new run from pretrained weights and --resume"),
        (
            ["--set", "freeze_stages=4"],
            "freeze_stages=4 is out of range for resnext11_4x16d: it has 3 stages, so use 0..3",
        ),  # fmt: skip
    ],
)
def test_bad_fine_tuning_options_exit_2_and_write_nothing(tmp_path, source, capsys, args, message):
    assert _train(tmp_path, "--init", str(source[0]), *args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "run").exists()


def test_init_from_another_architecture_names_the_keys(tmp_path, capsys):
    path, _ = _source(tmp_path / "other.pt", name="resnext11_8x16d")
    assert _train(tmp_path, "--init", str(path), "--model", "resnext11_4x16d") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a resnext11_8x16d model, not resnext11_4x16d" in err
    assert "shape mismatch (layer1.0.conv1.weight: file [128, 64, 1, 1] vs model [64, 64" in err
    assert not (tmp_path / "run").exists()


def test_backbone_lr_scale_sets_the_param_groups():
    cfg = resolve_config("tiny", {"backbone_lr_scale": "0.1", "lr": "0.2", "lr_batch": "16"})
    model = resnext.create_model(MODEL, in_channels=1)
    opt = build_optimizer(model, cfg)
    fc = {id(model.fc.weight), id(model.fc.bias)}
    rates = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert [rates[i] for i in fc] == pytest.approx([0.2, 0.2])
    backbone = [r for i, r in rates.items() if i not in fc]
    assert len(backbone) > 10 and backbone == pytest.approx([0.02] * len(backbone))
    set_lr(opt, 0.5)  # the schedule keeps the ratio
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([0.05, 0.5])


def test_finetune_recipe_is_the_readme_s():
    """README: SGD momentum 0.9, batch 64, lr 0.01 x batch/256, wd 1e-4, cosine, 1-epoch
    warm-up, label smoothing 0.1, 10 epochs; random-resized crop and flip, no colour noise."""
    from resnext.training.optim import peak_lr

    cfg = resolve_config("finetune")
    assert (cfg.optimizer, cfg.momentum, cfg.nesterov) == ("sgd", 0.9, False)
    assert (cfg.batch_size, cfg.lr, cfg.lr_batch) == (64, 0.01, 256)
    assert peak_lr(cfg) == pytest.approx(0.01 * 64 / 256)
    assert (cfg.weight_decay, cfg.schedule, cfg.warmup_epochs) == (1e-4, "cosine", 1.0)
    assert (cfg.label_smoothing, cfg.epochs, cfg.dataset) == (0.1, 10, "folder")
    assert (cfg.augment, cfg.hflip, cfg.color_jitter, cfg.lighting) == ("inception", True, 0, 0)


def test_frozen_bn_stays_in_eval_mode_while_the_rest_trains():
    model = resnext.create_model(MODEL, in_channels=1)
    frozen = freeze_stages(model, 1)
    model.train()
    assert not model.bn1.training and not model.layer1[0].bn3.training
    assert model.layer2[0].bn1.training and model.fc.weight.requires_grad
    assert "layer1.0.conv2.weight" in frozen and not model.layer1[0].conv2.weight.requires_grad
    assert all(p.requires_grad for p in model.layer2.parameters())
    before = model.layer1[0].bn1.running_mean.clone()
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    assert torch.equal(model.layer1[0].bn1.running_mean, before)
    assert (
        model.layer1[0].conv1.weight.grad is None and model.layer2[0].conv1.weight.grad is not None
    )


def test_without_model_the_run_trains_the_weights_architecture(tmp_path):
    path, want = _source(tmp_path / "other.pt", name="resnext11_8x16d")
    assert _train(tmp_path, "--init", str(path)) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"] == "resnext11_8x16d"
    got = read_model_file(tmp_path / "run" / "last.pt")["model"]
    assert got["layer1.0.conv1.weight"].shape == want["layer1.0.conv1.weight"].shape


def test_the_ema_starts_from_the_pretrained_weights(source):
    """With ema_decay on, the averaged copy starts from the file's weights, not from the random
    initialisation (it would drag the fine-tuned weights back towards noise)."""
    from resnext.training.engine import Trainee
    from resnext.training.finetune import start_from
    from resnext.training.optim import EMA

    path, want = source
    cfg = resolve_config("tiny", {"init": str(path), "ema_decay": 0.9})
    model = resnext.create_model(cfg.model, num_classes=7, in_channels=1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    t = Trainee(model, model, build_optimizer(model, cfg), scaler, EMA(model, 0.9))
    start_from(t, cfg, [f"class{i}" for i in range(7)])
    for name, tensor in want.items():
        assert torch.equal(t.raw.state_dict()[name], tensor), name
        assert torch.equal(t.ema.module.state_dict()[name], tensor), name
