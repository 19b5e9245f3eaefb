"""A study's results from its run directories: results.json, results.md and study.png.

Only finished runs enter the mean ± std; unfinished ones are listed with how far they got, so a
partial study reports what it measured and nothing more.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

from resnext.study.grid import WALL_FILE, grid, run_name
from resnext.study.plan import read_plan
from resnext.training.plot import read_metrics

WITHIN_SECONDS = 30 * 60  # "best accuracy within 30 minutes of training"


def _mean_std(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def run_summary(path: Path, epochs: int) -> dict[str, Any]:
    """What one run directory measured (empty metrics if it has not finished an epoch)."""
    rows = read_metrics(path) if (path / "metrics.jsonl").is_file() else []
    wall = path / WALL_FILE
    attempts = json.loads(wall.read_text())["attempts"] if wall.is_file() else []
    trained, within = 0.0, None
    for r in rows:
        trained += r["seconds"]
        if trained <= WITHIN_SECONDS:
            within = min(r["val_top1_error"], within if within is not None else 100.0)
    return {
        "run": path.name,
        "epochs_done": rows[-1]["epoch"] if rows else 0,
        "finished": bool(rows) and rows[-1]["epoch"] >= epochs,
        "final_error": rows[-1]["val_top1_error"] if rows else None,
        "best_error": min(r["val_top1_error"] for r in rows) if rows else None,
        "train_error": rows[-1]["train_top1_error"] if rows else None,
        "images_per_second": statistics.fmean(r["images_per_second"] for r in rows)
        if rows
        else None,
        "train_seconds": trained,
        "wall_seconds": sum(attempts),
        "best_error_within_30min": within,
        "curves": [[r["epoch"], r["train_top1_error"], r["val_top1_error"]] for r in rows],
    }


def versus_base(member: dict[str, float | None], base: dict[str, float | None]) -> dict[str, Any]:
    """A member's mean error minus the base's, with the standard error of that difference.

    The seeds are independent draws, so se = sqrt(s_m^2 / n_m + s_b^2 / n_b) (Welch); `z` is the
    difference in units of se: |z| < 2 is within the seed noise. None until both have 2 seeds.
    """
    if member["mean"] is None or base["mean"] is None:
        return {"delta": None, "se": None, "z": None}
    delta = member["mean"] - base["mean"]
    if member["std"] is None or base["std"] is None:
        return {"delta": delta, "se": None, "z": None}
    se = (member["std"] ** 2 / member["n"] + base["std"] ** 2 / base["n"]) ** 0.5
    return {"delta": delta, "se": se, "z": delta / se if se > 0 else None}


def collect(out: Path) -> dict[str, Any]:
    """Summarise every member of the study in `out` (its study.json says what was planned)."""
    plan = read_plan(out)
    if plan is None:
        raise ValueError(f"{out} holds no study (no study.json)")
    study, cfg = plan
    epochs, seeds = cfg.epochs, study.seeds
    rows = []
    for g in grid(study, cfg):
        runs = [run_summary(out / run_name(g["arm"], g["label"], s), epochs) for s in range(seeds)]
        done = [r for r in runs if r["finished"]]
        rows.append({
            **g,
            "seeds_finished": len(done),
            "final_error": _mean_std([r["final_error"] for r in done]),
            "best_error": _mean_std([r["best_error"] for r in done]),
            "train_error": _mean_std([r["train_error"] for r in done]),
            "images_per_second": _mean_std([r["images_per_second"] for r in done]),
            "wall_seconds": _mean_std([r["wall_seconds"] for r in done]),
            "runs": runs,
        })  # fmt: skip
    base = next((r for r in rows if r["base"]), None)
    for r in rows:
        against = base is not None and r is not base
        r["vs_base"] = versus_base(r["final_error"], base["final_error"]) if against else None
    unfinished = [
        f"{r['run']} ({r['epochs_done']}/{epochs} epochs)"
        for row in rows
        for r in row["runs"]
        if not r["finished"]
    ]
    return {"epochs": epochs, "seeds": seeds, "members": rows, "unfinished": unfinished,
            "base": base["label"] if base else None, "study": dataclasses.asdict(study),
            "config": cfg.to_dict()}  # fmt: skip


def _fmt(s: dict[str, Any], digits: int = 2) -> str:
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:.{digits}f}" + ("" if s["std"] is None else f" ± {s['std']:.{digits}f}")


def _versus(v: dict[str, Any] | None, is_base: bool) -> str:
    if is_base:
        return "base"
    if v is None or v["delta"] is None:
        return "-"
    if v["se"] is None:
        return f"{v['delta']:+.2f}"
    z = "" if v["z"] is None else f" (z {v['z']:+.1f})"
    return f"{v['delta']:+.2f} ± {v['se']:.2f}{z}"


def markdown(results: dict[str, Any]) -> str:
    """The results table, one row per member: errors in % over finished seeds."""
    lines = [
        f"Top-1 error (%) on the validation split, mean ± std over finished seeds "
        f"({results['epochs']} epochs, {results['seeds']} seed(s) planned); vs base: the "
        f"difference from {results['base'] or 'the template'} ± its standard error (z: in "
        "units of it).",
        "",
        "| arm | model | C | d | group width | params | MACs (M) | x base | final error "
        "| vs base | best error | train error | images/s | wall (min) | seeds |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    for r in results["members"]:
        wall = r["wall_seconds"]
        wall_min = {**wall, "mean": wall["mean"] / 60 if wall["mean"] else None, "std": None}
        lines.append(
            f"| {r['arm']} | {r['model']} | {r['cardinality']} | {r['d']} | {r['group_width']} "
            f"| {r['params']:,} | {r['macs'] / 1e6:.1f} | {r['macs_ratio']:.2f} "
            f"| {_fmt(r['final_error'])} | {_versus(r['vs_base'], r['base'])} "
            f"| {_fmt(r['best_error'])} | {_fmt(r['train_error'])} "
            f"| {_fmt(r['images_per_second'], 0)} | {_fmt(wall_min, 1)} "
            f"| {r['seeds_finished']}/{results['seeds']} |"
        )
    if results["unfinished"]:
        lines += ["", "Not finished: " + ", ".join(results["unfinished"]) + "."]
    return "\n".join(lines) + "\n"


def plot_study(results: dict[str, Any], path: Path) -> Path:
    """Final error per member with error bars (left) and mean curves per member (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    colours = {"cardinality": "C0", "width": "C1", "depth": "C2"}
    for i, r in enumerate(results["members"]):
        s = r["final_error"]
        if s["mean"] is not None:
            left.errorbar(i, s["mean"], yerr=s["std"] or 0, fmt="o", capsize=4,
                          color=colours[r["arm"]])  # fmt: skip
        curves = [run["curves"] for run in r["runs"] if run["curves"]]
        if not curves:
            continue
        n = max(len(c) for c in curves)
        epochs = list(range(1, n + 1))
        train = [statistics.fmean(c[e][1] for c in curves if len(c) > e) for e in range(n)]
        val = [statistics.fmean(c[e][2] for c in curves if len(c) > e) for e in range(n)]
        line = right.plot(epochs, val, lw=2.2, marker=".", label=r["label"])[0]
        right.plot(epochs, train, lw=1, ls="--", marker="x", color=line.get_color())
    labels = [f"{r['label']}\n{r['macs_ratio']:.2f}x MACs" for r in results["members"]]
    left.set_xticks(range(len(labels)), labels, rotation=30, fontsize=8)
    left.set(ylabel="final top-1 error (%)", title="error at equal recipe (mean ± std)")
    right.xaxis.get_major_locator().set_params(integer=True)
    right.set(xlabel="epochs", ylabel="top-1 error (%)", title="val (solid) and train (dashed)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    if right.lines:
        right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(out: str | Path) -> dict[str, Any]:
    """Write results.json, results.md and study.png into the study directory."""
    out = Path(out)
    results = collect(out)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(markdown(results))
    plot_study(results, out / "study.png")
    return results
