"""Run the fuzz targets: `python tests/fuzz/run.py [SECONDS] [TARGET ...]` (or `python3 make.py
fuzz [SECONDS]`), SECONDS of fuzzing per target (default 30), every target when none is named.

Each target runs in a child process, so that a crash inside a C library (pyarrow, PIL, torch)
or a hang costs that child only: the parent starts another for the time left and keeps the input
that killed it. The engine is atheris (libFuzzer, guided by coverage of the `resnext` package)
where it is installed (`pip install -e '.[fuzz]'`), else a seeded mutation loop that keeps
readable inputs as new seeds. An outcome the target does not allow is a finding: its input and
traceback are saved under runs/fuzz/TARGET/, one per kind (exception type and place).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # `fuzz` as a package, as the tests import it

from fuzz.targets import Target, targets  # noqa: E402

HANG_S = 20  # an input still running after this is a finding (each takes milliseconds)
MEMORY = 2 * 2**30  # bytes of address space an input may add: more is a finding (MemoryError)
MAX_CORPUS = 500


class Hang(BaseException):
    """Raised by the alarm into an input still running after HANG_S (never caught by targets)."""


class Findings:
    """The findings of a target under `out`: one saved input and traceback per signature."""

    def __init__(self, out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.seen = {p.read_text().splitlines()[0] for p in out.glob("finding-*.txt")}

    def record(self, data: bytes, signature: str, detail: str) -> None:
        if signature in self.seen:
            return
        self.seen.add(signature)
        stem = self.out / f"finding-{len(self.seen)}"
        stem.with_suffix(".bin").write_bytes(data)
        stem.with_suffix(".txt").write_text(f"{signature}\n\n{detail}")


def signature(e: BaseException) -> str:
    """The exception's type and the deepest place in this package it passed (else the last)."""
    frames = traceback.extract_tb(e.__traceback__)
    ours = [f for f in frames if "/resnext/" in f.filename] or frames[-1:]
    where = f" at {Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else ""
    return f"{type(e).__name__}{where}"


def run_one(target: Target, data: bytes, work: Path, findings: Findings, timed: bool) -> bool:
    """Run one input; True when it gave a value, False for an allowed error or a finding.
    `timed`: an alarm stops an input after HANG_S (libFuzzer keeps its own alarm)."""
    if timed:
        signal.setitimer(signal.ITIMER_REAL, HANG_S)
    try:
        target.run(data, work)
        return True
    except target.allowed:
        return False
    except Hang:
        findings.record(data, f"Hang over {HANG_S} s", "")
        return False
    except Exception as e:  # noqa: BLE001 - anything else is what the fuzzer looks for
        findings.record(data, signature(e), "".join(traceback.format_exception(e)))
        return False
    finally:
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)


def _alarm(*_) -> None:
    raise Hang


def mutation_loop(target: Target, seconds: float, seed: int, out: Path, work: Path) -> int:
    """The engine without atheris: seeds mutated at random; inputs that read become seeds."""
    signal.signal(signal.SIGALRM, _alarm)
    findings = Findings(out)
    corpus = target.seeds(work)
    _limit_memory()
    for data in corpus:
        run_one(target, data, work, findings, True)
    rng = random.Random(seed)
    executions, deadline, tick = len(corpus), time.monotonic() + seconds, 0.0
    while (now := time.monotonic()) < deadline:
        if now > tick:  # a count that survives a crash of this process
            (out / f"executions-{seed}").write_text(str(executions))
            tick = now + 1
        data = target.mutate(rng.choice(corpus), rng)
        (out / "current.bin").write_bytes(data)  # what a crash of this process leaves
        readable = run_one(target, data, work, findings, True)
        if readable and len(corpus) < MAX_CORPUS and data not in corpus:
            corpus.append(data)
        executions += 1
    (out / f"executions-{seed}").write_text(str(executions))
    return executions


def atheris_run(target: Target, seconds: float, seed: int, out: Path, work: Path) -> None:
    """libFuzzer through atheris, with the target's own mutations for half the inputs."""
    import atheris

    with atheris.instrument_imports(include=["resnext"]):
        import resnext.data.datasets  # noqa: F401 - instrumented for coverage
        import resnext.data.pages  # noqa: F401
        import resnext.data.tar  # noqa: F401
        import resnext.files.model_file  # noqa: F401
    findings = Findings(out)
    corpus = out / "corpus"
    corpus.mkdir(exist_ok=True)
    for k, data in enumerate(target.seeds(work)):
        (corpus / f"seed-{k}").write_bytes(data)
    _limit_memory()

    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.5:
            return atheris.Mutate(data, max_size)
        return target.mutate(data, rng)[:max_size]

    args = [sys.argv[0], f"-max_total_time={int(seconds)}", f"-seed={seed + 1}",
            f"-timeout={HANG_S}", "-rss_limit_mb=4096", f"-artifact_prefix={out}/",
            "-max_len=1000000", "-print_final_stats=1", str(corpus)]  # fmt: skip
    atheris.Setup(args, lambda data: run_one(target, data, work, findings, False),
                  custom_mutator=mutator)  # fmt: skip
    atheris.Fuzz()


def _limit_memory() -> None:
    """Cap the address space at what the process holds plus MEMORY: an input that makes a
    reader allocate without bound raises MemoryError here instead of exhausting the machine."""
    import resource

    status = Path("/proc/self/status")
    if not status.exists():  # not Linux: no cap
        return
    size = int(re.search(r"VmSize:\s+(\d+) kB", status.read_text()).group(1)) * 1024
    resource.setrlimit(
        resource.RLIMIT_AS, (size + MEMORY, resource.getrlimit(resource.RLIMIT_AS)[1])
    )


def child(name: str, seconds: float, engine: str, out: Path, seed: int) -> None:
    import tempfile

    work = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    try:
        if engine == "atheris":
            atheris_run(targets()[name], seconds, seed, out, work)
        else:
            mutation_loop(targets()[name], seconds, seed, out, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fuzz(name: str, seconds: float, engine: str, out: Path) -> dict:
    """Fuzz one target for `seconds`, in children restarted after a crash; a summary."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    executions, deaths, seed, start = 0, {}, 0, time.monotonic()
    while (left := seconds - (time.monotonic() - start)) > 1 or seed == 0:
        cmd = [sys.executable, __file__, "--child", name, "--engine", engine, "--seed", str(seed),
               "--out", str(out), str(max(left, 1))]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=left + 600)
            code, log = proc.returncode, proc.stderr + proc.stdout
        except subprocess.TimeoutExpired as e:
            code, log = "timeout", str(e.stderr or "")
        (out / f"log-{seed}.txt").write_text(log)
        runs = re.findall(r"stat::number_of_executed_units: (\d+)", log)
        count = out / f"executions-{seed}"
        executions += int(runs[-1]) if runs else int(count.read_text()) if count.exists() else 0
        artifacts = [p for p in out.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-"))]
        if code != 0 and not artifacts and (out / "current.bin").exists():  # the loop's input
            artifacts = [shutil.copy(out / "current.bin", out / "input.bin")]
        for p in map(Path, artifacts):
            kept = p.rename(out / f"died-{seed}-{p.name}")
            deaths.setdefault(_cause(code, log, p.name), []).append(kept.name)
        seed += 1
    found = sorted(p.read_text().splitlines()[0] + f" ({p.with_suffix('.bin').name})"
                   for p in out.glob("finding-*.txt"))  # fmt: skip
    found += [
        f"process died: {cause} ({len(files)}x, {files[0]})" for cause, files in deaths.items()
    ]
    return {"target": name, "engine": engine, "seconds": round(time.monotonic() - start),
            "executions": executions, "findings": found}  # fmt: skip


def _cause(code: int | str, log: str, artifact: str) -> str:
    """Why a child died, from its last words: a C++ exception's message, a fatal error, the
    exception that ended atheris, or libFuzzer's verdict (timeout, out of memory); else its exit
    status."""
    patterns = (r"what\(\):\s*(.+)", r"Fatal Python error: (.+)", r"(?m)^(\w+Error: .+)",
                r"ERROR: libFuzzer: (.+)")  # fmt: skip
    for pattern in patterns:
        found = re.findall(pattern, log)
        if found:
            return re.sub(r"\d+", "N", found[-1].strip())  # one cause whatever the sizes
    return f"{artifact.split('-')[0]}, exit status {code}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seconds", nargs="?", type=float, default=30)
    parser.add_argument("names", nargs="*", metavar="TARGET")
    parser.add_argument("--engine", choices=["atheris", "loop"])
    parser.add_argument("--out", type=Path, default=Path("runs/fuzz"))
    parser.add_argument("--child", metavar="TARGET")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.seconds, args.engine, args.out, args.seed)
    engine = args.engine
    if engine is None:
        try:
            import atheris  # noqa: F401
        except ImportError:
            engine = "loop"
        else:
            engine = "atheris"
    unknown = set(args.names) - set(targets())
    if unknown:
        sys.exit(f"unknown fuzz targets {sorted(unknown)}; the targets: {sorted(targets())}")
    failed = False
    for name in args.names or targets():
        summary = fuzz(name, args.seconds, engine, args.out / name)
        print(json.dumps(summary), flush=True)
        failed |= bool(summary["findings"])
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
