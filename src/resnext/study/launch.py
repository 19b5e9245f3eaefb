"""A study's runs as a submitit job array: one job per (member, seed), same run directories.

Each job trains one run directory exactly as the in-process launcher (grid.run_study) would,
so the report reads the same files and re-running skips finished runs. Job scripts and logs
live under STUDY/submitit/.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

from resnext.study.grid import StudyConfig, _add_wall, finished, members, run_dir, write_plan
from resnext.training.config import TrainConfig
from resnext.training.launcher import (
    ClusterOptions,
    JobFailed,
    TrainJob,
    job_result,
    make_executor,
    raise_error,
    require_submitit,
)

log = logging.getLogger("resnext.study.launch")


class StudyRun(TrainJob):
    """A study run: a TrainJob that also records each attempt's wall time (as run_study does)."""

    def train(self, cfg: TrainConfig, out: Path, resume: str | None) -> dict[str, Any]:
        began = time.perf_counter()
        try:
            return super().train(cfg, out, resume)
        finally:
            if os.environ.get("RANK", "0") == "0":  # one writer per run directory
                _add_wall(out, time.perf_counter() - began)


def submit_study(
    study: StudyConfig, cfg: TrainConfig, out: str | Path, opts: ClusterOptions
) -> bool:
    """Submit every unfinished (member, seed) as one job; wait and log each as it ends.

    Returns False when `opts.wait` is off (the jobs run on; `--report-only` collects them).
    Raises the first failed run's error, after every job has ended.
    """
    submitit = require_submitit()
    out = write_plan(study, cfg, out)
    runs = []
    for seed in range(study.seeds):  # seed-major, as run_study: early results span all C
        for m in members(study):
            path = run_dir(out, m, seed)
            if finished(path, cfg.epochs):
                log.info("skip %s: finished", path.name)
            else:
                runs.append((path, dataclasses.replace(cfg, model=m.name, seed=seed)))
    if not runs:
        return True
    executor = make_executor(opts, out / "submitit", f"resnext-study-{out.name}")
    # SLURM throttles the array itself; local jobs share this machine, so they go in waves.
    wave = opts.max_parallel if opts.cluster == "local" and opts.wait and opts.max_parallel else 0
    failures: list[tuple[str, dict[str, Any]]] = []
    done = 0
    for start in range(0, len(runs), wave or len(runs)):
        chunk = runs[start : start + (wave or len(runs))]
        with submitit.helpers.clean_env():
            jobs = executor.map_array(
                StudyRun(), [c for _, c in chunk], [str(p) for p, _ in chunk], ["auto"] * len(chunk)
            )
        names = {job.job_id: path.name for job, (path, _) in zip(jobs, chunk)}
        log.info("submitted %d job(s) (%s): %s; logs: %s", len(jobs), opts.cluster,
                 ", ".join(j.job_id for j in jobs), out / "submitit")  # fmt: skip
        if not opts.wait:
            log.info("not waiting: re-run with --report-only to collect the results")
            return False
        poll = 1.0 if opts.cluster == "local" else 30.0
        for job in submitit.helpers.as_completed(jobs, poll_frequency=poll):
            done += 1
            name = names[job.job_id]
            try:
                result = job_result(job)
            except JobFailed as e:
                result = {"status": "error", "type": "JobFailed", "message": str(e)}
            if result["status"] == "done":
                err = result["metrics"]["val_top1_error"]
                log.info("[%d/%d] %s: done, val top-1 error %.2f%% (job %s)", done, len(runs),
                         name, err, job.job_id)  # fmt: skip
            else:
                failures.append((name, result))
                log.warning("[%d/%d] %s: failed: %s (job %s)", done, len(runs), name,
                            result["message"], job.job_id)  # fmt: skip
    if failures:
        name, first = failures[0]
        raise_error(first, f"{len(failures)} of {len(runs)} run(s) failed; {name}: ")
    return True
