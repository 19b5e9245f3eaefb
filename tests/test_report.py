"""The study report from run directories written here (no training): every number it gives is
recomputed with numpy from the metrics.jsonl and wall.json files it read.

Rules: only finished runs (last epoch = the study's epochs) enter a member's mean and sample
standard deviation (n - 1); a member's best error is its runs' lowest validation error over
epochs, "within 30 minutes" the lowest among the epochs whose cumulative training seconds stay
within 1800; the difference from the base carries the Welch standard error; unfinished runs are
listed with how far they got.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from resnext.study.grid import StudyConfig, grid, run_config, run_name, write_plan
from resnext.study.report import collect, markdown, write_report

EPOCHS, SEEDS = 3, 3
STUDY = StudyConfig("resnext11_1x64d_p16", (1, 2, 4), "tiny", SEEDS)


def _write_run(folder: Path, rows: np.ndarray, walls: list[float]) -> None:
    """rows: per epoch (val error, train error, images/s, seconds)."""
    folder.mkdir(parents=True)
    lines = [
        json.dumps(
            {
                "epoch": e + 1,
                "val_top1_error": v,
                "train_top1_error": t,
                "images_per_second": i,
                "seconds": s,
                "lr": 0.1,
            }
        )  # fmt: skip
        for e, (v, t, i, s) in enumerate(rows.tolist())
    ]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "wall.json").write_text(json.dumps({"attempts": walls}))


@pytest.fixture
def study(tmp_path):
    """Three members x three seeds; the C = 2 member's seed 2 stopped after 1 epoch, the C = 4
    member's seed 0 never started. Returns the directory and the rows written per run."""
    cfg = run_config(STUDY, {"epochs": EPOCHS})
    out = write_plan(STUDY, cfg, tmp_path / "study")
    rng = np.random.default_rng(0)
    written = {}
    for g in grid(STUDY, cfg):
        for seed in range(SEEDS):
            if (g["cardinality"], seed) == (4, 0):
                continue
            epochs = 1 if (g["cardinality"], seed) == (2, 2) else EPOCHS
            rows = np.column_stack([
                rng.uniform(5, 60, epochs), rng.uniform(1, 50, epochs),
                rng.uniform(100, 900, epochs), rng.uniform(300, 900, epochs),
            ])  # fmt: skip
            walls = rng.uniform(100, 2000, rng.integers(1, 4)).tolist()
            _write_run(out / run_name(g["arm"], g["label"], seed), rows, walls)
            written[(g["label"], seed)] = (rows, walls)
    return out, written


def _within_30min(rows: np.ndarray) -> float | None:
    inside = rows[np.cumsum(rows[:, 3]) <= 1800, 0]
    return float(inside.min()) if len(inside) else None


def test_each_run_s_summary_is_its_files(study):
    out, written = study
    members = {m["label"]: m for m in collect(out)["members"]}
    for (label, seed), (rows, walls) in written.items():
        run = members[label]["runs"][seed]
        assert run["epochs_done"] == len(rows) and run["finished"] == (len(rows) == EPOCHS)
        assert run["final_error"] == rows[-1, 0] and run["train_error"] == rows[-1, 1]
        assert run["best_error"] == rows[:, 0].min()
        assert run["images_per_second"] == pytest.approx(rows[:, 2].mean())
        assert run["train_seconds"] == pytest.approx(rows[:, 3].sum())
        assert run["wall_seconds"] == pytest.approx(sum(walls))
        assert run["best_error_within_30min"] == _within_30min(rows)
        assert run["curves"] == [[e + 1, r[1], r[0]] for e, r in enumerate(rows.tolist())]
    missing = members["4x24d"]["runs"][0]
    assert (missing["epochs_done"], missing["finished"], missing["final_error"]) == (0, False, None)


def test_means_and_spreads_over_finished_seeds_are_numpy_s(study):
    out, written = study
    results = collect(out)
    assert (results["epochs"], results["seeds"], results["base"]) == (EPOCHS, SEEDS, "1x64d")
    columns = {"final_error": (-1, 0), "best_error": (None, 0), "train_error": (-1, 1),
               "images_per_second": (None, 2)}  # fmt: skip
    for m in results["members"]:
        done = [written[(m["label"], s)] for s in range(SEEDS) if (m["label"], s) in written]
        done = [(rows, walls) for rows, walls in done if len(rows) == EPOCHS]
        assert m["seeds_finished"] == len(done) == (3 if m["label"] == "1x64d" else 2)
        for key, (row, col) in columns.items():
            if key == "best_error":
                values = [rows[:, col].min() for rows, _ in done]
            elif row is None:
                values = [rows[:, col].mean() for rows, _ in done]
            else:
                values = [rows[row, col] for rows, _ in done]
            assert m[key]["n"] == len(values)
            assert m[key]["mean"] == pytest.approx(np.mean(values), rel=1e-12)
            assert m[key]["std"] == pytest.approx(np.std(values, ddof=1), rel=1e-12)
        walls = [sum(w) for _, w in done]
        assert m["wall_seconds"]["mean"] == pytest.approx(np.mean(walls))
    base, *others = results["members"]
    assert base["vs_base"] is None
    for m in others:
        b, o = base["final_error"], m["final_error"]
        se = np.sqrt(b["std"] ** 2 / b["n"] + o["std"] ** 2 / o["n"])
        assert m["vs_base"]["delta"] == pytest.approx(o["mean"] - b["mean"])
        assert m["vs_base"]["se"] == pytest.approx(se)
        assert m["vs_base"]["z"] == pytest.approx((o["mean"] - b["mean"]) / se)
    assert results["unfinished"] == [
        "cardinality-2x40d-seed2 (1/3 epochs)",
        "cardinality-4x24d-seed0 (0/3 epochs)",
    ]


def test_one_finished_seed_has_no_spread_and_none_has_no_mean(tmp_path):
    cfg = run_config(STUDY, {"epochs": 1})
    out = write_plan(STUDY, cfg, tmp_path / "study")
    one = np.array([[12.5, 3.0, 400.0, 10.0]])
    _write_run(out / "cardinality-1x64d-seed0", one, [30.0])
    _write_run(out / "cardinality-2x40d-seed0", one + 1, [30.0])
    results = collect(out)
    first, second, third = results["members"]
    assert first["final_error"] == {"mean": 12.5, "std": None, "n": 1}
    assert second["vs_base"] == {"delta": pytest.approx(1.0), "se": None, "z": None}
    assert third["final_error"] == {"mean": None, "std": None, "n": 0}
    assert third["vs_base"] == {"delta": None, "se": None, "z": None}
    table = markdown(results)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[4:7]]
    assert rows[0][8:10] == ["12.50", "base"] and rows[1][8:10] == ["13.50", "+1.00"]
    assert rows[2][8:14] == ["-"] * 6 and rows[2][-1] == "0/3"  # nothing finished: no numbers
    assert rows[0][13] == "0.5"  # 30 s of wall time


def test_the_table_shows_each_member_s_numbers(study):
    out, _ = study
    results = write_report(out)
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    table = (out / "results.md").read_text()
    assert (out / "study.png").stat().st_size > 0
    for m in results["members"]:
        f, v = m["final_error"], m["vs_base"]
        row = next(line for line in table.splitlines() if f"| {m['model']} |" in line)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == "cardinality" and cells[2] == str(m["cardinality"])
        assert cells[8] == f"{f['mean']:.2f} ± {f['std']:.2f}"
        if v is None:
            assert cells[9] == "base"
        else:
            assert cells[9] == f"{v['delta']:+.2f} ± {v['se']:.2f} (z {v['z']:+.1f})"
        assert cells[-1] == f"{m['seeds_finished']}/{SEEDS}"
        assert cells[5] == f"{m['params']:,}" and cells[6] == f"{m['macs'] / 1e6:.1f}"
        assert cells[7] == f"{m['macs_ratio']:.2f}"
        for i, key in ((10, "best_error"), (11, "train_error")):
            assert cells[i] == f"{m[key]['mean']:.2f} ± {m[key]['std']:.2f}"
        assert (
            cells[12]
            == f"{m['images_per_second']['mean']:.0f} ± {m['images_per_second']['std']:.0f}"
        )
        assert cells[13] == f"{m['wall_seconds']['mean'] / 60:.1f}"  # minutes, no spread
    header = [c.strip() for c in table.splitlines()[2].strip("|").split("|")]
    assert header == ["arm", "model", "C", "d", "group width", "params", "MACs (M)", "x base",
                      "final error", "vs base", "best error", "train error", "images/s",
                      "wall (min)", "seeds"]  # fmt: skip
    assert table.splitlines()[3].count("|") == len(header) + 1
    assert "difference from 1x64d ± its standard error (z: in units of it)." in table
    assert (out / "results.json").read_text() == json.dumps(results, indent=1) + "\n"
    assert table.rstrip().endswith(
        "Not finished: cardinality-2x40d-seed2 (1/3 epochs), cardinality-4x24d-seed0 (0/3 epochs)."
    )


def _final_errors_study(tmp_path: Path, study: StudyConfig, errors: dict[str, list]) -> Path:
    """One-epoch runs whose final errors are `errors[label][seed]` (None: never started)."""
    cfg = run_config(study, {"epochs": 1})
    out = write_plan(study, cfg, tmp_path / "study")
    for g in grid(study, cfg):
        for seed, error in enumerate(errors.get(g["label"], [])):
            if error is not None:
                row = np.array([[error, 10.0, 500.0, 60.0]])
                _write_run(out / run_name(g["arm"], g["label"], seed), row, [60.0])
    return out


@pytest.mark.parametrize(
    "base, member",
    [
        ([20.0, 22.0, 27.0], [18.0, 18.5]),  # |z| > 2
        ([20.0, 20.1], [20.05, 20.2, 20.12]),  # se < 1
        ([30.0, 30.0], [25.0, 25.0]),  # no spread at all: se 0, no z
        ([30.0, 30.0], [30.0, None, 30.0]),
        ([20.0], [21.0, 23.0]),  # one side with one seed: no se yet
        ([20.0, 23.0], [21.0]),
    ],
)
def test_vs_base_is_welch_s_difference_and_standard_error(tmp_path, base, member):
    from scipy import stats

    two = StudyConfig(STUDY.template, (1, 2), "tiny", 3)
    out = _final_errors_study(tmp_path, two, {"1x64d": base, "2x40d": member})
    results = collect(out)
    v = results["members"][1]["vs_base"]
    b, m = np.array(base, dtype=float), np.array([e for e in member if e is not None])
    assert v["delta"] == pytest.approx(m.mean() - b.mean(), rel=1e-12)
    cell = [c.strip() for c in markdown(results).splitlines()[5].strip("|").split("|")][9]
    if min(len(b), len(m)) < 2:
        assert v["se"] is None and v["z"] is None
        assert cell == f"{v['delta']:+.2f}"
        return
    se = np.sqrt(b.var(ddof=1) / len(b) + m.var(ddof=1) / len(m))
    assert v["se"] == pytest.approx(se, rel=1e-9, abs=1e-12)
    if se == 0:
        assert v["z"] is None and cell == f"{v['delta']:+.2f} ± 0.00"
    else:  # scipy's Welch t statistic is the same number
        welch = stats.ttest_ind(m, b, equal_var=False).statistic
        assert v["z"] == pytest.approx(welch, rel=1e-9)
        assert cell == f"{v['delta']:+.2f} ± {se:.2f} (z {welch:+.1f})"


def test_within_30_minutes_counts_the_epoch_that_ends_at_1800_s(tmp_path):
    from resnext.study.report import run_summary

    for i, seconds in enumerate(([1800.0], [900.0, 900.0, 1.0], [600.0] * 4, [450.0] * 4 + [1])):
        errors = np.linspace(60, 10, len(seconds))  # the last epoch within is the best one
        rows = np.column_stack([errors, errors, np.full(len(seconds), 100.0), seconds])
        _write_run(tmp_path / str(i), rows, [])
        inside = np.cumsum(seconds) <= 1800
        got = run_summary(tmp_path / str(i), len(seconds))["best_error_within_30min"]
        assert got == errors[inside].min()


def test_a_directory_without_a_study_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path}.*study.json"):
        collect(tmp_path)


def test_a_study_without_its_template_has_no_base(tmp_path):
    no_base = StudyConfig(STUDY.template, (2, 4), "tiny", 2)
    out = _final_errors_study(tmp_path, no_base, {"2x40d": [20.0, 21.0], "4x24d": [19.0, 22.0]})
    results = collect(out)
    assert results["base"] is None
    assert [m["vs_base"] for m in results["members"]] == [None, None]
    table = markdown(results)
    assert "difference from the template ± its standard error" in table
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[4:6]]
    assert [row[9] for row in cells] == ["-", "-"]


def test_results_json_names_the_plan_it_reports(study):
    out, _ = study
    plan = json.loads((out / "study.json").read_text())
    results = json.loads(json.dumps(write_report(out)))
    assert results["study"] == plan["study"] and results["config"] == plan["config"]
    assert json.loads((out / "results.json").read_text()) == results


def test_results_md_renders_as_one_table_with_a_row_per_member(study):
    """Python-Markdown's own table extension (tensorboard's dependency, in the test extra)."""
    import xml.etree.ElementTree as ET

    markdown_lib = pytest.importorskip("markdown")
    out, _ = study
    results = write_report(out)
    html = markdown_lib.markdown((out / "results.md").read_text(), extensions=["tables"])
    root = ET.fromstring(f"<root>{html}</root>")
    (table,) = root.iter("table")
    header = [th.text for th in table.iter("th")]
    rows = [[td.text or "" for td in tr.iter("td")] for tr in table.find("tbody")]
    assert len(header) == 15 and header[:2] == ["arm", "model"]
    assert len(rows) == len(results["members"]) and all(len(r) == len(header) for r in rows)
    assert [r[1] for r in rows] == [m["model"] for m in results["members"]]
    # every number column right-aligned, the two name columns not
    aligned = [th.get("style", "") for th in table.iter("th")]
    assert ["right" in a for a in aligned] == [False, False] + [True] * 13
    paragraphs = [p.text or "" for p in root.iter("p")]
    assert paragraphs[0].startswith("Top-1 error (%)")
    assert paragraphs[-1] == "Not finished: " + ", ".join(results["unfinished"]) + "."
