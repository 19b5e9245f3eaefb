#!/usr/bin/env python3
"""Set-up and entry points: `python3 make.py demo` runs the main job, `python3 make.py test` the tests,
`python3 make.py fuzz [SECONDS]` the fuzz targets (tests/fuzz/), SECONDS each (default 30).

Each creates (or reuses) a virtual environment in .venv and installs the package with pip.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def ensure_env(extras: str) -> None:
    """Create .venv and install `.[extras]` once; again when pyproject.toml changes.

    The demo needs only `train` (a smaller, faster first install); the tests need `test`.
    """
    stamp = VENV / f".installed-{extras}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    if not PY.exists():
        print("creating .venv ...", flush=True)
        venv.create(VENV, with_pip=True)
    print(f"installing resnext[{extras}] and its dependencies into .venv ...", flush=True)
    pip = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "-e", f"{ROOT}[{extras}]"], check=True)
    stamp.write_text(digest)


def run(*cmd: str) -> None:
    code = subprocess.run(cmd, cwd=ROOT).returncode
    if code:
        sys.exit(code)


def main() -> None:
    target = sys.argv[1] if len(sys.argv) > 1 else "demo"
    extra = sys.argv[2:]
    if target not in ("demo", "test", "fuzz"):
        sys.exit(f"usage: python3 make.py demo|test|fuzz (got {target!r})")
    ensure_env("train" if target == "demo" else "test")
    if target == "fuzz":
        try:  # atheris has wheels for Linux on x86-64; elsewhere the mutation loop runs
            ensure_env("test,fuzz")
        except subprocess.CalledProcessError:
            print("atheris did not install: fuzzing with the seeded mutation loop", flush=True)
        run(str(PY), str(ROOT / "tests" / "fuzz" / "run.py"), *extra)
    elif target == "demo":
        # The main job: train the `digits` recipe on the CPU, print accuracy, run dir, plot.
        # The demo's own directory is replaced on every run (`--overwrite`); nothing else is.
        demo = ["train", "--recipe", "digits", "--out", "runs/digits", "--overwrite"]
        run(str(BIN / "resnext"), *demo, *extra)
    else:
        run(str(BIN / "ruff"), "check", "src", "tests", "make.py")
        run(str(BIN / "ruff"), "format", "--check", "src", "tests", "make.py")
        run(str(PY), "-m", "pytest", "-q", *extra)


if __name__ == "__main__":
    main()
