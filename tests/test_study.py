"""The cardinality study: grid, names, end to end through the CLI, skip on re-run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from resnext.cli import main
from resnext.files.model_file import read_model_file
from resnext.models.design import design_width
from resnext.models.zoo import get_spec, model_name, parse_name
from resnext.study.grid import PRESETS, StudyConfig, grid, members, run_config

from conftest import needs_cifar

DATA = Path(__file__).parents[2] / "shared" / "data"


@pytest.mark.parametrize(
    "name", ["resnext29_8x64d", "resnext50_32x4d", "resnext101_2x40d", "resnext11_4x16d"]
)
def test_parse_name_agrees_with_the_table(name):
    assert parse_name(name) == get_spec(name)
    assert model_name(get_spec(name)) == name


@pytest.mark.parametrize(
    ("name", "depths", "planes"),
    [("resnext11_8x12d_p16", (1, 1, 1), 16), ("resnext38_1x64d", (4, 4, 4), 64)],
)
def test_parse_name_builds_unregistered_designs(name, depths, planes):
    spec = get_spec(name, num_classes=3)
    assert (spec.depths, spec.base_planes, spec.num_classes) == (depths, planes, 3)
    assert model_name(spec) == name


@pytest.mark.parametrize("name", ["resnext12_1x64d", "resnet50_1x64d", "resnext29_1x64"])
def test_unparseable_names_stay_unknown(name):
    with pytest.raises(ValueError, match="unknown model"):
        get_spec(name)


def test_presets_are_the_papers_settings():
    cifar, imagenet = PRESETS["cifar"], PRESETS["imagenet"]
    assert (cifar.template, cifar.width_rule, cifar.cardinalities) == (
        "resnext29_1x64d", "fixed", (1, 2, 4, 8, 16))  # fmt: skip
    assert (imagenet.template, imagenet.width_rule, imagenet.cardinalities) == (
        "resnet50", "preserve", (1, 2, 4, 8, 32))  # fmt: skip
    assert run_config(cifar, {}).epochs == 300 and run_config(imagenet, {}).recipe == "imagenet"
    assert [m.label for m in members(cifar)][-1] == "16x64d"


def test_cpu_preset_keeps_the_complexity():
    """Table 2's rule at a quarter of the width: every member within 10% of C = 1's MACs."""
    study = PRESETS["cpu"]
    rows = grid(study, run_config(study, {}))
    assert [r["d"] for r in rows] == [design_width(c, 64, 16) for c in study.cardinalities]
    assert all(abs(r["macs"] - rows[0]["macs"]) / rows[0]["macs"] < 0.10 for r in rows)
    assert len(study.cardinalities) >= 4 and study.seeds >= 2


def test_table4_preset_doubles_the_complexity_three_ways():
    """Table 4 at CPU scale: deeper, wider and 2x64d all cost about the same, well above 1x."""
    study = PRESETS["table4-cpu"]
    rows = {r["label"]: r["macs"] for r in grid(study, run_config(study, {}))}
    base = rows["1x64d"]
    doubled = [rows["2x64d"], rows["1x100d"], rows["depth 20"]]
    assert all(1.5 < m / base < 2.2 for m in doubled)
    assert max(doubled) / min(doubled) < 1.15
    assert abs(rows["8x12d"] - base) / base < 0.10 and study.seeds >= 3


def test_the_grid_names_its_base_and_each_members_cost_over_it():
    study = PRESETS["table4-cpu"]
    rows = grid(study, run_config(study, {}))
    assert [r["label"] for r in rows if r["base"]] == ["1x64d"]
    base = next(r["macs"] for r in rows if r["base"])
    for r in rows:
        assert r["macs_ratio"] == pytest.approx(r["macs"] / base)
    assert {r["label"]: round(r["macs_ratio"], 2) for r in rows}["2x64d"] > 1.5


def test_differences_from_the_base_come_with_their_seed_noise():
    from resnext.study.report import versus_base

    base = {"mean": 30.0, "std": 0.3, "n": 3}
    v = versus_base({"mean": 29.0, "std": 0.4, "n": 3}, base)
    se = ((0.3**2 + 0.4**2) / 3) ** 0.5
    assert v["delta"] == pytest.approx(-1.0) and v["se"] == pytest.approx(se)
    assert v["z"] == pytest.approx(-1.0 / se)
    one_seed = versus_base({"mean": 31.0, "std": None, "n": 1}, base)
    assert one_seed == {"delta": pytest.approx(1.0), "se": None, "z": None}
    assert versus_base({"mean": None, "std": None, "n": 0}, base)["delta"] is None


def test_arms_cover_width_and_depth():
    study = StudyConfig("resnext29_1x64d", (1, 2), "cifar", widths=(96,), depths=(38,))
    arms = [(m.arm, m.label, m.spec.depths) for m in members(study)]
    assert arms[2:] == [("width", "1x96d", (3, 3, 3)), ("depth", "depth 38", (4, 4, 4))]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cardinalities", "0,x"], "--cardinalities expects comma-separated positive"),
        (["--widths", "-4"], "--widths expects"),
        (["--seeds", "0"], "--seeds must be positive"),
        (["--template", "nope"], "give --recipe"),
        (["--template", "resnext29_8x64d", "--recipe", "cifar"], "C = 1 bottleneck"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message, capsys, tmp_path):
    argv = ["study", "--template", "cpu", "--out", str(tmp_path), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def _final(run: Path) -> list[float]:
    """A run's last epoch, read straight from its metrics.jsonl."""
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    return [last[k] for k in ("val_top1_error", "train_top1_error", "images_per_second")]


def test_tiny_study_of_two_seeds_end_to_end_and_rerun_skips(tmp_path, capsys, caplog):
    """Two members, two seeds: each seed trains its own run, and the report's mean, standard
    deviation and Welch standard error of the difference equal numpy's from the runs' files."""
    argv = ["study", "--template", "resnext11_1x64d_p16", "--recipe", "tiny",
            "--cardinalities", "1,2", "--seeds", "2", "--epochs", "1",
            "--set", "train_limit=32", "--set", "val_limit=64", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| cardinality | resnext11_2x40d_p16 | 2 | 40 | 20 |" in printed  # grid before training
    assert "| x base |" in printed and "| 1.00 |" in printed
    for name in ("results.md", "results.json", "study.png"):
        assert (tmp_path / name).stat().st_size > 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [m["label"] for m in results["members"]] == ["1x64d", "2x40d"]
    assert all(m["seeds_finished"] == 2 for m in results["members"])
    assert results["unfinished"] == [] and results["base"] == "1x64d"
    runs = {label: [tmp_path / f"cardinality-{label}-seed{s}" for s in (0, 1)]
            for label in ("1x64d", "2x40d")}  # fmt: skip
    for a, b in runs.values():
        assert [json.loads((r / "config.json").read_text())["seed"] for r in (a, b)] == [0, 1]
        wa, wb = (read_model_file(r / "last.pt")["model"] for r in (a, b))
        assert not torch.equal(wa["fc.weight"], wb["fc.weight"])  # two seeds, two runs
    table = results["members"]
    for m in table:
        values = np.array([_final(r) for r in runs[m["label"]]])  # seeds x (val, train, img/s)
        for col, key in enumerate(("final_error", "train_error", "images_per_second")):
            assert m[key]["n"] == 2
            assert m[key]["mean"] == pytest.approx(np.mean(values[:, col]), abs=1e-9)
            assert m[key]["std"] == pytest.approx(np.std(values[:, col], ddof=1), abs=1e-9)
    base, other = (np.array([_final(r)[0] for r in runs[k]]) for k in ("1x64d", "2x40d"))
    assert table[0]["vs_base"] is None
    vs = table[1]["vs_base"]
    se = np.sqrt(np.var(base, ddof=1) / 2 + np.var(other, ddof=1) / 2)
    assert vs["delta"] == pytest.approx(other.mean() - base.mean(), abs=1e-9)
    assert vs["se"] == pytest.approx(se, abs=1e-9)
    assert vs["z"] == (pytest.approx(vs["delta"] / se) if se > 0 else None)
    f = table[1]["final_error"]
    assert f"| {f['mean']:.2f} ± {f['std']:.2f} |" in (tmp_path / "results.md").read_text()
    checkpoint = tmp_path / "cardinality-2x40d-seed1" / "last.pt"
    before = checkpoint.stat().st_mtime_ns

    caplog.set_level("INFO", logger="resnext.study.grid")
    assert main(argv) == 0
    assert checkpoint.stat().st_mtime_ns == before
    assert "skip cardinality-2x40d-seed1: finished" in caplog.text


def _tiny_study(out: Path, *extra: str) -> list[str]:
    return ["study", "--template", "resnext11_1x64d_p16", "--recipe", "tiny",
            "--cardinalities", "1,2", "--seeds", "1", "--epochs", "1", "--set", "train_limit=32",
            "--set", "val_limit=16", "--out", str(out), *extra]  # fmt: skip


def test_a_study_directory_remembers_its_grid(tmp_path, capsys):
    """--report-only and a plain re-run read the grid from study.json; contradicting flags are
    refused. Run on a copy of a study directory, its study.json in the format written so far."""
    made = tmp_path / "made"
    assert main(_tiny_study(made)) == 0
    copy = tmp_path / "copy"
    shutil.copytree(made, copy)
    plan = json.loads((copy / "study.json").read_text())
    assert set(plan) == {"study", "config", "grid"}  # the format earlier versions wrote
    (copy / "results.md").unlink()
    shutil.rmtree(copy / "cardinality-2x40d-seed0")  # one run not done yet
    capsys.readouterr()
    assert main(["study", "--template", "resnext11_1x64d_p16", "--out", str(copy),
                 "--report-only"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "| cardinality | resnext11_1x64d_p16 | 1 | 64 |" in out and "| 1/1 |" in out
    assert "Not finished: cardinality-2x40d-seed0 (0/1 epochs)." in out
    assert json.loads((copy / "study.json").read_text()) == plan  # kept as it was
    for flags, message in (
        (["--cardinalities", "1,2,4"], "holds a study with cardinalities=1,2, not 1,2,4"),
        (["--epochs", "3"], "holds a study with epochs=1, not 3"),
        (["--template", "imagenet"], "holds a study with template=resnext11_1x64d_p16, not"),
        (["--set", "lr=0.5"], "holds a study with lr="),
    ):
        assert main(["study", "--out", str(copy), "--report-only", *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert main(["study", "--out", str(copy), "--epochs", "1"]) == 0  # agrees: trains the rest
    assert "Not finished" not in capsys.readouterr().out


def test_a_study_adapts_to_the_digits_channels(tmp_path, capsys):
    """The cpu preset's CIFAR recipe on 8 px grey digits: mean/std and sizes come from digits."""
    cfg = run_config(PRESETS["cpu"], {"dataset": "digits"})
    assert (cfg.mean, cfg.std, cfg.train_size, cfg.eval_crop) == ((0.305,), (0.376,), 8, 8)
    assert run_config(PRESETS["cpu"], {"dataset": "digits", "pad": 2}).pad == 2
    argv = ["study", "--template", "cpu", "--dataset", "digits", "--cardinalities", "1",
            "--seeds", "1", "--epochs", "1", "--set", "train_limit=64", "--set", "val_limit=32",
            "--set", "batch_size=32",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    assert "| cardinality | resnext11_1x64d_p16 | 1 | 64 |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="an image folder decodes to 3 channels"):
        run_config(PRESETS["cpu"], {"dataset": "folder", "mean": "0.5", "std": "0.2"})


@needs_cifar
def test_cpu_preset_resolves_for_the_jpeg_folder():
    """The published command's data path and preset resolve (no training here)."""
    assert (DATA / "cifar10-jpeg" / "train").is_dir()
    cfg = run_config(PRESETS["cpu"], {"dataset": "folder", "data": str(DATA / "cifar10-jpeg")})
    assert (cfg.channels_last, cfg.precision, cfg.train_size) == (True, "fp32", 32)


def test_a_line_torn_by_a_kill_does_not_break_resume_or_report(tmp_path):
    """A kill mid-write leaves half a metrics line; the study still sees the finished epochs."""
    from resnext.study.grid import finished
    from resnext.training.plot import read_metrics

    lines = [json.dumps({"epoch": e, "val_top1_error": 50.0 - e}) for e in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"epoch": 3, "val_to')
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]
    assert finished(tmp_path, 2) and not finished(tmp_path, 3)
