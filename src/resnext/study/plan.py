"""A study directory remembers its grid: study.json holds the study, the shared recipe and the
grid (grid.write_plan), and every later command on the directory reads them back.

A re-run or `--report-only` needs no flags but `--out`; flags given anyway must agree with the
saved study, since a grid that silently changed would report runs that were never planned (or
drop the ones that were). study.json files from earlier versions read the same way.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from resnext.study.grid import PRESETS, StudyConfig, run_config
from resnext.training.config import TrainConfig, apply_overrides, config_from_dict


def study_from_dict(d: dict[str, Any]) -> StudyConfig:
    """The StudyConfig that `dataclasses.asdict` wrote (lists back to tuples)."""
    names = {f.name for f in dataclasses.fields(StudyConfig)}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
    overrides = kw.get("overrides") or {}
    kw["overrides"] = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return StudyConfig(**kw)


def read_plan(out: str | Path) -> tuple[StudyConfig, TrainConfig] | None:
    """The study and shared recipe saved in `out/study.json`, or None for a new study."""
    path = Path(out) / "study.json"
    if not path.is_file():
        return None
    try:
        plan = json.loads(path.read_text())
        return study_from_dict(plan["study"]), config_from_dict(plan["config"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a study plan: {e}") from None


def resolve_study(
    out: str | Path,
    template: str | None,
    recipe: str | None,
    changes: dict[str, Any],
    overrides: dict[str, Any],
) -> tuple[StudyConfig, TrainConfig]:
    """The study in `out` (flags must agree with it), or a new one from a preset or template.

    Args:
        template: a preset name or a C = 1 model (None: the saved study's).
        recipe: the training recipe (None: the preset's or the saved study's).
        changes: StudyConfig fields given on the command line (cardinalities, seeds, ...).
        overrides: TrainConfig fields given on the command line (dataset, data, epochs, --set).
    """
    saved = read_plan(out)
    if saved is None:
        return _new_study(template, recipe, changes, overrides)
    study, cfg = saved
    given = dict(changes)
    if template is not None:
        given["template"] = PRESETS[template].template if template in PRESETS else template
    if recipe is not None:
        given["recipe"] = recipe
    for key, value in given.items():
        if getattr(study, key) != value:
            _contradiction(out, key, getattr(study, key), value)
    wanted = apply_overrides(cfg, overrides)
    for key in overrides:
        if getattr(wanted, key) != getattr(cfg, key):
            _contradiction(out, key, getattr(cfg, key), getattr(wanted, key))
    return study, cfg


def _new_study(
    template: str | None, recipe: str | None, changes: dict[str, Any], overrides: dict[str, Any]
) -> tuple[StudyConfig, TrainConfig]:
    if template is None:
        raise ValueError("--template is needed to start a study (a preset or a C = 1 model)")
    if template in PRESETS:
        study = PRESETS[template]
    elif recipe is None:
        raise ValueError(f"--template {template!r} is no preset {sorted(PRESETS)}: give --recipe")
    else:
        study = StudyConfig(template, (1, 2, 4, 8), recipe)
    study = dataclasses.replace(study, **changes, **({"recipe": recipe} if recipe else {}))
    return study, run_config(study, overrides)


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def _contradiction(out: str | Path, key: str, saved: Any, given: Any) -> None:
    raise ValueError(
        f"{out} holds a study with {key}={_show(saved)}, not {_show(given)}: leave that flag "
        "out (the study remembers its grid) or choose another --out"
    )
