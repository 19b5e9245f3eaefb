"""Benchmark harness: our model against torchvision's, same weights and input, interleaved.

Each row times our configured model and the reference (torchvision eager, fp32, NCHW) in the same
process, alternating iterations after warm-up so that machine noise hits both alike, and reports
median images/s with the spread, their ratio, achieved GFLOP/s against a GEMM peak measured in the
same run at the precision the row runs (n/a where no such peak exists), and peak memory.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from resnext.inference.backends import optimize_for_inference
from resnext.models.complexity import count_complexity
from resnext.models.forms import convert_form
from resnext.models.merged import merge_small_groups
from resnext.models.model import ResNeXt, create_model
from resnext.models.zoo import default_input_size
from resnext.precision import DTYPES as _DTYPES
from resnext.precision import autocast

Mode = Literal["infer", "train"]


@dataclass(frozen=True)
class BenchConfig:
    """One row of the benchmark."""

    model: str = "resnext50_32x4d"
    mode: Mode = "infer"
    batch_size: int = 32
    precision: str = "fp32"
    layout: str = "nchw"
    compile: bool = False
    form: str = "c"
    input_size: int | None = None
    warmup: int = 3
    iters: int = 10
    device: str = "cpu"
    backend: str = "torch"  # inference only: "onnxruntime" runs the exported model in ORT
    merge_groups: bool = False  # run groups of < 4 channels merged (merged.merge_small_groups)


def torchvision_reference(model: ResNeXt) -> nn.Module | None:
    """torchvision's ResNet with the same architecture and weights (ImageNet template, shortcut B)."""
    import torchvision  # here, not at import: `resnext --help` should not pay for it

    spec = model.spec
    if spec.template != "imagenet" or spec.shortcut != "B" or spec.form != "c" or not spec.residual:
        return None
    block = torchvision.models.resnet.BasicBlock
    if spec.block == "bottleneck":
        block = torchvision.models.resnet.Bottleneck
    ref = torchvision.models.resnet.ResNet(
        block,
        list(spec.depths),
        num_classes=spec.num_classes,
        groups=spec.cardinality,
        width_per_group=spec.base_width,
    )
    ref.load_state_dict(model.state_dict())
    return ref


def gemm_peak_gflops(dtype: torch.dtype, device: str, n: int = 2048, reps: int = 5) -> float:
    """Best GFLOP/s of an n x n matmul: the ceiling a conv net can approach here."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(reps + 1):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def peak_precision(precision: str, device: str) -> torch.dtype | None:
    """The dtype whose GEMM bounds what a row at `precision` runs, or None where none is known:
    CPUs have no fp16 GEMM (PyTorch's fp16 matmul there is a slow fallback, 40x below the
    convolutions oneDNN runs), so no fp16 peak on the CPU would mean anything."""
    if precision == "fp16" and not device.startswith("cuda"):
        return None
    return _DTYPES[precision]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_flops(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """FLOPs of one training image: forward, input gradients (none for the first conv), weight
    gradients. A grouped conv's weight gradient costs its forward MACs, not the dense layer's
    (PyTorch's FlopCounterMode counts it dense)."""
    c = count_complexity(model, input_size)
    return 2 * (3 * c.macs - c.stages["conv1"]["macs"])


def _peak_memory_start(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    else:
        try:  # Linux: "5" resets the peak resident set size (VmHWM)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def _peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _step_fn(model: nn.Module, cfg: BenchConfig, x: Tensor, ours: bool) -> Callable[[], None]:
    """One inference or training step; the reference always runs eager fp32 NCHW."""
    if cfg.mode == "infer":

        def infer() -> None:
            with torch.inference_mode():
                model(x)

        return infer
    precision = cfg.precision if ours else "fp32"
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    y = torch.randint(0, 10, (x.shape[0],), device=x.device)  # any valid class ids
    scaler = torch.amp.GradScaler(x.device.type, enabled=precision == "fp16")
    if ours and cfg.layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if (ours and cfg.compile) else model

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(x.device, precision):
            loss = nn.functional.cross_entropy(forward(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return train


def run_row(cfg: BenchConfig) -> dict:
    """Time one configuration against the torchvision reference; returns a JSON-able row."""
    base = create_model(cfg.model)  # form (c): the weights both sides share
    reference = torchvision_reference(base)
    if reference is None:  # no torchvision twin: our own eager fp32 NCHW form (c) is the baseline
        reference = copy.deepcopy(base)
    model = base if cfg.form == "c" else convert_form(base, cfg.form)
    if cfg.merge_groups:
        merge_small_groups(model)  # after the reference took its copy of the weights
    size = cfg.input_size or default_input_size(base.spec)
    shape = (3, size, size)
    flops = (
        2 * count_complexity(model, shape).macs
        if cfg.mode == "infer"
        else train_flops(model, shape)
    )
    model, reference = model.to(cfg.device), reference.to(cfg.device)
    x = torch.randn(cfg.batch_size, *shape, device=cfg.device)
    if cfg.mode == "infer":
        reference.eval()
        model = optimize_for_inference(
            model,
            cfg.precision,
            compile=cfg.compile,
            channels_last=cfg.layout == "nhwc",
            backend=cfg.backend,
        )
    else:
        model.train()
        reference.train()
        if cfg.layout == "nhwc":
            model = model.to(memory_format=torch.channels_last)
    steps = {"ours": _step_fn(model, cfg, x, True), "ref": _step_fn(reference, cfg, x, False)}
    peak_mb = {}
    for name, step in steps.items():
        _peak_memory_start(cfg.device)
        for _ in range(cfg.warmup):
            step()
        _sync(cfg.device)
        peak_mb[name] = _peak_memory_mb(cfg.device)
    times: dict[str, list[float]] = {"ours": [], "ref": []}
    for _ in range(cfg.iters):
        for name, step in steps.items():
            _sync(cfg.device)
            t = time.perf_counter()
            step()
            _sync(cfg.device)
            times[name].append(time.perf_counter() - t)
    ips = {k: [cfg.batch_size / t for t in v] for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in ips.items()}
    dtype = peak_precision("fp32" if cfg.backend == "onnxruntime" else cfg.precision, cfg.device)
    peak = gemm_peak_gflops(dtype, cfg.device) if dtype is not None else None
    gflops = flops * med["ours"] / 1e9
    return asdict(cfg) | {
        "input_size": size,
        "images_per_s": med["ours"],
        "images_per_s_min": min(ips["ours"]),
        "images_per_s_max": max(ips["ours"]),
        "ref_images_per_s": med["ref"],
        "ratio": med["ours"] / med["ref"],
        "gflops": gflops,
        "gemm_peak_gflops": peak,
        "fraction_of_peak": gflops / peak if peak else None,
        "peak_memory_mb": peak_mb["ours"],
        "ref_peak_memory_mb": peak_mb["ref"],
        "flops_per_image": flops,
    }


def _engine(row: dict) -> str:
    if row.get("backend") == "onnxruntime":
        return "ONNX Runtime"
    engine = "compile" if row["compile"] else "eager"
    return engine + " + merged groups" if row.get("merge_groups") else engine


def _percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.0f}%"


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    head = (
        "| model | mode | batch | precision | layout | engine | form | img/s (min-max) "
        "| torchvision img/s | ratio | GFLOP/s (% of GEMM peak) | peak MB (ref) |\n"
        "| --- | --- | ---: | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |\n"
    )
    lines = [
        f"| {r['model']} | {r['mode']} | {r['batch_size']} | {r['precision']} | {r['layout']} "
        f"| {_engine(r)} | {r['form']} | {r['images_per_s']:.1f} "
        f"({r['images_per_s_min']:.1f}-{r['images_per_s_max']:.1f}) | {r['ref_images_per_s']:.1f} "
        f"| {r['ratio']:.2f}x | {r['gflops']:.0f} ({_percent(r['fraction_of_peak'])}) "
        f"| {r['peak_memory_mb']:.0f} ({r['ref_peak_memory_mb']:.0f}) |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"
