"""ImageNet at ImageNet's size: what starting a run costs, per format and per number of ranks.

    python benchmarks/scale.py [--root DIR] [--samples N] [--bytes N]
    python benchmarks/scale.py --samples 20000            # a quick check (16 + 1 shards)

Makes (or reuses, under --root) a synthetic ImageNet-1k in both formats (synthetic_imagenet.py:
1,281,167 + 50,000 tiny JPEGs in 1,024 + 64 shards), then measures for WebDataset shards and
parquet, with 1 rank and with 2 (`torchrun --standalone`, gloo on the CPU):

- index build: `load_dataset(FMT, ROOT, "train", in_memory="no")` timed in a fresh process with
  the split's index (data/index.py) removed; cached index load: the same again in a second fresh
  process, which reads the index the first one wrote (and, in brackets, the slowest rank's load
  inside the training run);
- start to first step: wall time from starting `resnext train` (recipe imagenet at 16 px, a tiny
  model, 4 workers per rank) to its first step's log line;
- main RSS (VmRSS, and the peak VmHWM) when both splits are loaded; each worker's private
  memory (USS: Private_* of /proc/PID/smaps_rollup) after --steps steps;
- shard opens per image: strace on one worker of rank 0 from the first step for --trace-steps
  steps; its opens of shard files over its positioned reads (one per image);
- ranks that scanned the headers: each rank counts its own index builds; with 2 ranks the run is made once
  with the index in place and once without (`(no index)`: one rank builds it, the other waits).

Needs strace (Debian: `apt-get install strace`). Prints one markdown table with the CPU
(`lscpu`), the date and the load average. The page cache
holds the tree when it was just written (warm reads); a network file system adds a round trip
per shard header read and per open.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from synthetic_imagenet import TRAIN, make_tree

HERE = Path(__file__).resolve()
STEP = re.compile(r" step (\d+)/\d+ ")
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_tile",
         "amx_int8")  # fmt: skip


def memory(pid: int | str = "self") -> dict[str, float]:
    """VmRSS and VmHWM of a process, MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def uss_mib(pid: int) -> float:
    """A process's private memory (unique set size), MiB."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    return sum(int(v) for v in re.findall(r"^Private_\w+:\s+(\d+) kB", text, re.M)) / 1024


def children(pid: int) -> list[int]:
    """The child processes of `pid` (a rank's DataLoader workers; torchrun's ranks)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def probe(fmt: str, root: str, split: str = "train") -> None:
    """In a fresh process: how long loading the training split's index takes, and its memory."""
    from resnext.allocator import tune_allocator
    from resnext.data.datasets import load_dataset

    tune_allocator()  # as the `resnext` command does
    wall, cpu = time.perf_counter(), time.process_time()
    data = load_dataset(fmt, root, split, in_memory="no")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"samples": len(data), "seconds": wall, "cpu_seconds": cpu, **memory()}))


def rank(report: Path, argv: list[str]) -> int:
    """`resnext train` in this process, with its data loading timed: report/rank{RANK}.json."""
    import resnext.data.index as index
    import resnext.training.inputs as training
    from resnext.cli import main

    real, loads, built = training.load_dataset, [], []
    build = index._build

    def counted(path, key, root, split, scan):  # this rank scans the training split's headers
        built.append(split == "train")
        return build(path, key, root, split, scan)

    index._build = counted

    def timed(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        data = real(*args, **kwargs)
        loads.append({"split": data.split, "seconds": time.perf_counter() - wall,
                      "cpu_seconds": time.process_time() - cpu})  # fmt: skip
        if len(loads) == 2:  # training and validation: what the run holds from here on
            out = {"pid": os.getpid(), "loads": loads, "scanned": sum(built), **memory()}
            name = report / f"rank{os.environ.get('RANK', '0')}.json"
            name.with_suffix(".tmp").write_text(json.dumps(out))
            name.with_suffix(".tmp").replace(name)
        return data

    training.load_dataset = timed
    return main(argv)


def fresh_load(fmt: str, root: Path, split: str = "train") -> dict:
    """`probe` in a new interpreter."""
    cmd = [sys.executable, str(HERE), "--probe", fmt, str(root / fmt), split]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


class Log:
    """A process's output read on a thread: when each training step's line arrived."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.steps, self.tail = proc, {}, []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            found = STEP.search(line)
            if found:
                self.steps.setdefault(int(found.group(1)), time.time())
            self.tail = [*self.tail[-40:], line]

    def wait(self, step: int, timeout: float) -> float:
        """When step `step` was logged; raises if the run ends or `timeout` passes first."""
        end = time.time() + timeout
        while step not in self.steps:
            if self.proc.poll() is not None or time.time() > end:
                raise RuntimeError(f"no step {step} logged:\n{''.join(self.tail)}")
            time.sleep(0.05)
        return self.steps[step]


def opens_per_image(worker: int, log: Log, until: int, timeout: float, trace: Path) -> dict:
    """strace one worker until step `until` is logged: its opens of shard files, all its opens
    and closes, and its positioned reads (one per image)."""
    cmd = ["strace", "-f", "-p", str(worker), "-e", "trace=open,openat,close,pread64",
           "-o", str(trace)]  # fmt: skip
    strace = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    began = time.time()
    try:
        log.wait(until, timeout)
    finally:
        strace.send_signal(signal.SIGINT)
        strace.wait(30)
    text = trace.read_text()
    opened = re.findall(r'\bopen(?:at)?\((?:AT_FDCWD, )?"([^"]*)"', text)
    shards = [p for p in opened if p.endswith((".tar", ".parquet"))]
    shard_opens = len(shards)
    reads = len(re.findall(r"\bpread64\(", text))
    return {"shard_opens": shard_opens, "distinct_shards": len(set(shards)), "opens": len(opened),
            "reads": reads,
            "closes": len(re.findall(r"\bclose\(", text)), "seconds": time.time() - began,
            "per_image": shard_opens / reads if reads else None}  # fmt: skip


def kill(proc: subprocess.Popen) -> None:
    """Kill a run and its workers: torchrun starts each rank in a session of its own."""
    leaders = [proc.pid]
    try:
        leaders += children(proc.pid)
    except OSError:  # it has ended
        pass
    for pid in leaders:
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def drop_index(fmt: str, root: Path) -> None:
    """Remove the split indexes (data/index.py) so that the next load builds them."""
    shutil.rmtree(root / fmt / "_index", ignore_errors=True)


def train_run(fmt: str, root: Path, ranks: int, args: argparse.Namespace) -> dict:
    """One `resnext train` (under torchrun for ranks > 1), measured and then killed."""
    work = Path(tempfile.mkdtemp(prefix="scale-run-"))
    train = ["train", "--recipe", "imagenet", "--model", args.model, "--dataset", fmt,
             "--data", str(root / fmt), "--out", str(work / "run"), "--epochs", "1",
             "--batch-size", str(args.batch)]  # fmt: skip
    for kv in ("in_memory=no", "train_size=16", "eval_resize=16", "eval_crop=16", "log_steps=1",
               f"workers={args.workers}"):  # fmt: skip
        train += ["--set", kv]
    cmd = [str(HERE), "--rank-report", str(work), "--", *train]
    if ranks > 1:
        cmd = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *cmd]
    began = time.time()
    proc = subprocess.Popen([sys.executable, *cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    log = Log(proc)
    try:
        first = log.wait(1, args.timeout) - began
        reports = [json.loads((work / f"rank{r}.json").read_text()) for r in range(ranks)]
        workers = [children(r["pid"]) for r in reports]
        opens = opens_per_image(
            workers[0][0], log, 1 + args.trace_steps, args.timeout, work / "strace.txt"
        )
        log.wait(args.steps, args.timeout)
        uss = [uss_mib(w) for ws in workers for w in ws]
        now = [memory(r["pid"])["VmRSS"] for r in reports]
    finally:
        kill(proc)
        shutil.rmtree(work, ignore_errors=True)
    train_loads = [next(x for x in r["loads"] if x["split"] == "train") for r in reports]
    return {"first_step": first, "ranks": reports, "train_loads": train_loads, "opens": opens,
            "worker_uss": uss, "rss_at_steps": now}  # fmt: skip


def cpu() -> tuple[str, list[str], list[str]]:
    """`lscpu`'s model name, and which of FLAGS it lists and lacks."""
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    return (
        fields.get("Model name", "?").strip(),
        [f for f in FLAGS if f in flags],
        [f for f in FLAGS if f not in flags],
    )


def table(results: dict, args: argparse.Namespace) -> str:
    """The markdown table of every (format, ranks) measured."""
    rows = ["| format | ranks | index build, s (CPU s) | cached index load, s | start to first "
            f"step, s | main RSS after loading, MiB (peak) | worker USS after {args.steps} "
            "steps, MiB (mean / max) | shard opens per image (one worker) | ranks that "
            "scanned the headers |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for (fmt, ranks, cold), r in results.items():
        loads, fresh = r["train_loads"], r["fresh"]
        slow = max(loads, key=lambda x: x["seconds"])
        took = f"{slow['seconds']:.1f} ({slow['cpu_seconds']:.1f})"
        if cold:  # no index when the run starts: it is built in the run
            build, cached = f"{took} in the run, slowest rank", "-"
        else:
            build = f"{fresh[0]['seconds']:.1f} ({fresh[0]['cpu_seconds']:.1f})"
            cached = f"{fresh[1]['seconds']:.1f} (in the run: {took})"
        rss = max(r["ranks"], key=lambda x: x["VmRSS"])
        uss = r["worker_uss"]
        o = r["opens"]
        per = f"{o['per_image']:.2f}" if o["per_image"] is not None else "-"
        per += f", {o['distinct_shards']} shards"
        scans = f"{sum(x['scanned'] for x in r['ranks'])} of {ranks}"
        rows.append(
            f"| {fmt} | {ranks}{' (no index)' if cold else ''} | {build} | {cached} | {r['first_step']:.1f} | "
            f"{rss['VmRSS']:.0f} ({rss['VmHWM']:.0f}) | {sum(uss) / len(uss):.1f} / "
            f"{max(uss):.1f} ({len(uss)}) | {per} ({o['shard_opens']} of {o['reads']} "
            f"reads, {o['opens']} opens, {o['closes']} closes in {o['seconds']:.0f} s) | "
            f"{scans} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="keep the tree here and reuse it (default: a temporary "
                        "folder, deleted at the end)")  # fmt: skip
    parser.add_argument("--samples", type=int, default=TRAIN, help="training samples")
    parser.add_argument("--bytes", type=int, default=0, help="bytes per image (padded JPEGs)")
    parser.add_argument("--formats", default="wds,parquet")
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--model", default="resnext11_4x16d_p16")
    parser.add_argument("--batch", type=int, default=64, help="global batch")
    parser.add_argument("--workers", type=int, default=4, help="loader workers per rank")
    parser.add_argument("--steps", type=int, default=100, help="steps before worker memory")
    parser.add_argument("--trace-steps", type=int, default=20, help="steps of one worker traced")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait a step")
    parser.add_argument("--json", help="also write the measurements here")
    args = parser.parse_args()
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="resnext-scale-"))
    try:
        load = os.getloadavg()
        tree = make_tree(root, args.samples, args.bytes)
        print(f"tree: {json.dumps(tree)}", flush=True)
        results = {}
        for fmt in args.formats.split(","):
            drop_index(fmt, root)
            fresh = [fresh_load(fmt, root) for _ in range(2)]  # the index built, then read
            fresh_load(fmt, root, "auto")  # the held-out split's index: a run then reads both
            print(f"{fmt}: fresh loads {json.dumps(fresh)}", flush=True)
            runs = [(r, False) for r in map(int, args.ranks.split(","))]
            for ranks, cold in [*runs, *((r, True) for r, _ in runs if r > 1)]:
                if cold:
                    drop_index(fmt, root)
                key = (fmt, ranks, cold)
                results[key] = {"fresh": fresh, **train_run(fmt, root, ranks, args)}
                print(f"{fmt}, {ranks} rank(s), cold={cold}: {json.dumps(results[key])}",
                      flush=True)  # fmt: skip
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)
    model, has, lacks = cpu()
    print(f"\n{time.strftime('%Y-%m-%d')}, `lscpu` model name {model!r}, {os.cpu_count()} "
          f"CPUs; flags: {' '.join(has)}; not: {' '.join(lacks) or 'none'}; load average "
          f"{load[0]:.1f} before, {os.getloadavg()[0]:.1f} after; {tree['args']['samples']:,} "
          f"training samples, {tree['args']['val_samples']:,} validation, shards "
          f"{tree['args']['shards']}, images of {min(tree['image_bytes'])}-"
          f"{max(tree['image_bytes'])} bytes\n")  # fmt: skip
    print(table(results, args))
    if args.json:
        rows = [{"format": f, "ranks": r, "no_index": c, **v} for (f, r, c), v in results.items()]
        Path(args.json).write_text(json.dumps({"tree": tree, "runs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        probe(*sys.argv[2:5])
    elif sys.argv[1:2] == ["--rank-report"] and sys.argv[3:4] == ["--"]:
        sys.exit(rank(Path(sys.argv[2]), sys.argv[4:]))
    else:
        main()
