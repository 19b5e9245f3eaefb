"""study.png against results.json: the figure is read back through matplotlib's artists (the
figure object that was saved) and every plotted number compared with numpy over the runs' curves.

Rules: left, one point per member with a finished seed at its mean final error, with a bar of
± its std (none for a single seed), one colour per arm, and each member's label and MACs ratio
under its tick; right, per member with any epoch, the mean validation error per epoch (solid)
and the mean training error (dashed, same colour), averaged over the runs that reached the
epoch, on integer epoch ticks, one legend entry per member.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from resnext.study.grid import StudyConfig, grid, run_config, run_name, write_plan
from resnext.study.report import write_report

EPOCHS, SEEDS = 4, 2
STUDY = StudyConfig("resnext11_1x64d_p16", (1, 2, 4), "tiny", SEEDS, widths=(80, 96), depths=(20,))
# (label, seed) -> epochs written (0: never started); the others finish. 4x24d has no run at
# all, 1x80d only unfinished ones, 1x96d and depth 20 one finished seed each.
PARTIAL = {("4x24d", 0): 0, ("4x24d", 1): 0, ("1x80d", 0): 1, ("1x80d", 1): 3,
           ("1x96d", 1): 0, ("depth 20", 1): 2}  # fmt: skip


@pytest.fixture
def figure(tmp_path):
    """The study's report and the figure it saved."""
    cfg = run_config(STUDY, {"epochs": EPOCHS})
    out = write_plan(STUDY, cfg, tmp_path / "study")
    rng = np.random.default_rng(3)
    for g in grid(STUDY, cfg):
        for seed in range(SEEDS):
            epochs = PARTIAL.get((g["label"], seed), EPOCHS)
            if not epochs:
                continue
            folder = out / run_name(g["arm"], g["label"], seed)
            folder.mkdir()
            rows = [
                {"epoch": e + 1, "val_top1_error": rng.uniform(5, 60),
                 "train_top1_error": rng.uniform(1, 50), "images_per_second": 100.0,
                 "seconds": 10.0, "lr": 0.1}
                for e in range(epochs)
            ]  # fmt: skip
            (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    saved = []
    original = Figure.savefig

    def record(self, *args, **kwargs):
        saved.append(self)
        return original(self, *args, **kwargs)

    # function-scoped: mutmut maps a function to the tests during which it ran
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Figure, "savefig", record)
        write_report(out)
    results = json.loads((out / "results.json").read_text())
    assert len(saved) == 1 and (out / "study.png").stat().st_size > 0
    return results, saved[0]


def test_left_panel_is_each_member_s_mean_and_std(figure):
    results, fig = figure
    left, _ = fig.axes
    members = results["members"]
    arms = [m["arm"] for m in members]
    assert set(arms) == {"cardinality", "width", "depth"}
    points = {}
    for container in left.containers:
        data, _, bars = container.lines
        (x, y), = data.get_xydata()  # fmt: skip
        points[int(x)] = (y, bars, to_rgba(data.get_color()))
        assert data.get_marker() not in (None, "", " ", "None")  # a visible point
    finished = [i for i, m in enumerate(members) if m["final_error"]["mean"] is not None]
    assert sorted(points) == finished and len(finished) == len(members) - 2
    for i in finished:
        s = members[i]["final_error"]
        y, bars, _ = points[i]
        assert y == pytest.approx(s["mean"])
        spread = [seg[:, 1] for col in bars for seg in col.get_segments()]
        if s["std"] is None:  # one finished seed: no spread drawn
            assert all(np.ptp(seg) == 0 for seg in spread)
        else:
            assert len(spread) == 1
            assert sorted(spread[0]) == pytest.approx([s["mean"] - s["std"], s["mean"] + s["std"]])
    assert any(members[i]["final_error"]["std"] is None for i in finished)
    for i in finished:
        for j in finished:
            same_colour = points[i][2] == points[j][2]
            assert same_colour == (arms[i] == arms[j])
    ticks = [t.get_text() for t in left.get_xticklabels()]
    assert list(left.get_xticks()) == list(range(len(members)))
    assert ticks == [f"{m['label']}\n{m['macs_ratio']:.2f}x MACs" for m in members]
    assert left.get_ylabel() == "final top-1 error (%)" and "mean ± std" in left.get_title()


def test_right_panel_is_each_member_s_mean_curves(figure):
    results, fig = figure
    _, right = fig.axes
    drawn = [m for m in results["members"] if any(r["curves"] for r in m["runs"])]
    assert [m["label"] for m in results["members"] if m not in drawn] == ["4x24d"]
    lines = right.get_lines()
    assert len(lines) == 2 * len(drawn)
    for m, val, train in zip(drawn, lines[0::2], lines[1::2]):
        curves = [np.array(r["curves"]) for r in m["runs"] if r["curves"]]
        n = max(len(c) for c in curves)
        padded = np.full((len(curves), n, 3), np.nan)
        for k, c in enumerate(curves):
            padded[k, : len(c)] = c
        mean = np.nanmean(padded, axis=0)  # over the runs that reached each epoch
        for line, column, style in ((val, 2, "-"), (train, 1, "--")):
            np.testing.assert_allclose(line.get_xdata(), np.arange(1, n + 1))
            np.testing.assert_allclose(line.get_ydata(), mean[:, column], rtol=1e-12)
            assert line.get_linestyle() == style
        assert to_rgba(val.get_color()) == to_rgba(train.get_color())
        assert val.get_label() == m["label"]
    colours = [to_rgba(line.get_color()) for line in lines[0::2]]
    assert len(set(colours)) == len(colours)
    legend = right.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [m["label"] for m in drawn]
    lo, hi = right.get_xlim()
    ticks = [t for t in right.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks)  # whole epochs
    assert (right.get_xlabel(), right.get_ylabel()) == ("epochs", "top-1 error (%)")
    assert "val (solid)" in right.get_title() and "train (dashed)" in right.get_title()
