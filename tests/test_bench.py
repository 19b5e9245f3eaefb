"""Fast paths give the plain model's outputs; the benchmark harness runs at tiny sizes."""

from __future__ import annotations

import json

import pytest
import torch

from resnext import build_model, create_model, list_models
from resnext.allocator import tune_allocator
from resnext.cli import main
from resnext.inference.backends import OnnxRuntimeModel, optimize_for_inference
from resnext.inference.bench import (
    BenchConfig,
    markdown,
    peak_precision,
    run_row,
    torchvision_reference,
    train_flops,
)
from resnext.models.complexity import count_complexity
from resnext.models.merged import MergedGroupsConv2d, block_diagonal, merge_small_groups
from resnext.models.zoo import get_spec
from resnext.training.config import resolve_config
from resnext.training.distributed import Context
from resnext.training.train import _build

from conftest import randomize_bn, tiny_spec


@pytest.mark.parametrize("form", ["a", "c"])
def test_optimize_for_inference_fp32_eager_matches(form: str) -> None:
    model = randomize_bn(build_model(tiny_spec(form=form)))
    x = torch.randn(4, 3, 16, 16)
    fast = optimize_for_inference(model, "fp32", compile=False, backend="torch")
    with torch.no_grad():
        assert (fast(x) - model(x)).abs().max().item() <= 1e-4
    assert model.training is False and any(
        isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()
    )


def test_optimize_for_inference_compiled_matches() -> None:
    model = randomize_bn(build_model(tiny_spec(depths=(1, 1, 1), cardinality=2)))
    x = torch.randn(2, 3, 8, 8)
    fast = optimize_for_inference(model, "fp32", compile=True, backend="torch")
    with torch.no_grad():
        assert (fast(x) - model(x)).abs().max().item() <= 1e-4


def test_optimize_for_inference_onnxruntime_matches() -> None:
    pytest.importorskip("onnxruntime")
    model = randomize_bn(build_model(tiny_spec(depths=(1, 1, 1), cardinality=2)))
    fast = optimize_for_inference(model, "fp32")  # "auto": ONNX Runtime for fp32 on the CPU
    assert isinstance(fast, OnnxRuntimeModel)
    for batch, size in ((1, 16), (3, 16), (2, 24)):  # batch dynamic; one export per image size
        x = torch.randn(batch, 3, size, size)
        with torch.no_grad():
            assert (fast(x) - model(x)).abs().max().item() <= 1e-4
    assert sorted(fast.sessions) == [(3, 16, 16), (3, 24, 24)]
    assert not isinstance(optimize_for_inference(model, "bf16", compile=False), OnnxRuntimeModel)
    with pytest.raises(ValueError, match="fp32 only"):
        optimize_for_inference(model, "bf16", backend="onnxruntime")
    with pytest.raises(ValueError, match="backend must be one of"):
        optimize_for_inference(model, backend="tensorrt")


def test_optimize_for_inference_bf16_agrees_on_top1() -> None:
    model = randomize_bn(build_model(tiny_spec()))
    x = torch.randn(64, 3, 16, 16)
    fast = optimize_for_inference(model, "bf16", compile=False)
    with torch.no_grad():
        ref = model(x)
        out = fast(x)
    assert out.dtype == torch.float32
    assert (out.argmax(1) == ref.argmax(1)).float().mean().item() >= 0.9
    assert (out - ref).abs().max().item() < 0.1 * ref.abs().max().item()


@pytest.mark.parametrize(("groups", "width", "merge"), [(8, 3, 2), (8, 2, 4), (6, 3, 2), (4, 5, 4)])
def test_block_diagonal_weight_is_the_grouped_conv(groups: int, width: int, merge: int) -> None:
    per_out = 2
    w = torch.randn(groups * per_out, width, 3, 3)
    x = torch.randn(2, groups * width, 7, 7)
    dense = block_diagonal(w, groups, merge)
    assert dense.shape == (groups * per_out, merge * width, 3, 3)
    assert (dense != 0).sum() == (w != 0).sum()  # nothing added but zeros
    out = torch.nn.functional.conv2d(x, dense, padding=1, groups=groups // merge)
    torch.testing.assert_close(out, torch.nn.functional.conv2d(x, w, padding=1, groups=groups))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_merged_groups_train_exactly_like_grouped_convs(layout: torch.memory_format) -> None:
    """The study's C = 8 member has 3-channel groups in its first stage: merged in pairs, the
    outputs, input gradient and every weight gradient are the grouped model's. In float64, so
    that no ReLU flips on a rounding difference."""
    plain = build_model(get_spec("resnext11_8x12d_p16")).train().double()
    merged = build_model(get_spec("resnext11_8x12d_p16")).train().double()
    assert merge_small_groups(merged) == 1  # 3-channel groups merge; 6 and 12 do not
    merged.load_state_dict(plain.state_dict())  # a checkpoint loads into merged layers as is
    assert count_complexity(merged, (3, 32, 32)) == count_complexity(plain, (3, 32, 32))
    convs = [m for m in merged.modules() if isinstance(m, MergedGroupsConv2d)]
    assert [(c.groups, c.merge, c.in_channels) for c in convs] == [(8, 2, 24)]
    assert list(merged.state_dict()) == list(plain.state_dict())
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    outs = []
    for model, xi in zip((plain, merged), xs):
        model.to(memory_format=layout)
        outs.append(model(xi.contiguous(memory_format=layout)))
        outs[-1].square().sum().backward()
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(xs[1].grad, xs[0].grad, rtol=1e-10, atol=1e-10)
    for (name, p), q in zip(plain.named_parameters(), merged.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("name", list_models())
def test_merge_keeps_every_zoo_model_as_built(name: str) -> None:
    """The paper's networks have 4 or more channels per group: no registered model is merged,
    only narrowed study members like resnext11_8x12d_p16."""
    with torch.device("meta"):
        assert merge_small_groups(create_model(name)) == 0


def test_merge_leaves_wide_depthwise_and_dense_convs_alone() -> None:
    for spec in (tiny_spec(), tiny_spec(cardinality=1)):  # 4-channel groups; dense convs
        assert merge_small_groups(build_model(spec)) == 0
    depthwise = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, groups=8))
    assert merge_small_groups(depthwise) == 0
    two = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, groups=8))  # 2 channels -> 4
    assert merge_small_groups(two) == 1 and two[0].merge == 2


@pytest.mark.parametrize("merge", [True, False])
def test_trainer_merges_small_groups_on_the_cpu_unless_told_not(merge: bool) -> None:
    cfg = resolve_config("cifar", {"merge_groups": merge})
    ctx = Context(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    trainee = _build(get_spec("resnext11_8x12d_p16"), cfg, ctx)
    merged = [m for m in trainee.raw.modules() if isinstance(m, MergedGroupsConv2d)]
    assert len(merged) == (1 if merge else 0)


# In a fresh process (a clean heap), glibc's own counters (mallinfo2) say where a 64 MB block
# comes from: an mmap of its own with glibc's defaults; the heap when tuned, which keeps it after
# free (no trim); once the defaults are back, the heap is trimmed at the next free and the block
# after that is an mmap again.
ALLOCATIONS = """
import ctypes, importlib.util, json, sys
spec = importlib.util.spec_from_file_location("allocator", sys.argv[1])
allocator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(allocator)
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
rows = []
for enable in (False, True, False, False):
    ok = allocator.tune_allocator(enable)
    before = libc.mallinfo2()
    p = libc.malloc(64 << 20)
    held = libc.mallinfo2()
    libc.free(p)
    rows.append([ok, (held.hblkhd - before.hblkhd) >> 20, libc.mallinfo2().arena >> 20])
print(json.dumps(rows))
"""


def test_allocator_tuning_switches_on_and_off() -> None:
    """Tuned: a large block comes from the heap and stays there when freed; switched off: the
    defaults are back and it is an mmap of its own (glibc's counters, in a fresh process)."""
    import ctypes.util
    import subprocess
    import sys

    import resnext.allocator

    if not sys.platform.startswith("linux") or "libc.so.6" not in str(
        ctypes.util.find_library("c")
    ):
        assert tune_allocator(True) is False  # nothing to tune: says so
        return
    argv = [sys.executable, "-c", ALLOCATIONS, resnext.allocator.__file__]
    rows = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    assert all(ok for ok, _, _ in rows)
    (_, off_mmap, _), (_, on_mmap, on_heap), (_, _, trimmed), (_, again_mmap, _) = rows
    assert off_mmap >= 64  # glibc's defaults: a mapping of its own
    assert on_mmap == 0 and on_heap >= 64  # tuned: from the heap, kept after free
    assert trimmed < 64 and again_mmap >= 64  # switched off: trimmed, then mapped again


def test_reference_is_torchvision_with_the_same_function() -> None:
    ours = create_model("resnext50_32x4d").eval()
    ref = torchvision_reference(ours).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), ours(x))
    assert torchvision_reference(create_model("resnext29_2x64d")) is None


def test_training_flops_count_grouped_weight_gradients_sparsely() -> None:
    """Train FLOPs = 3x forward, minus conv1's input gradient: ~25.1 GFLOP for ResNeXt-50."""
    with torch.device("meta"):
        model = create_model("resnext50_32x4d")
    assert abs(train_flops(model, (3, 224, 224)) / 1e9 - 25.1) < 0.2


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_bench_row_runs(mode: str) -> None:
    cfg = BenchConfig("resnet18", mode, batch_size=2, input_size=32, warmup=1, iters=2)
    row = run_row(cfg)
    assert row["images_per_s"] > 0 and row["ref_images_per_s"] > 0 and row["ratio"] > 0
    assert 0 < row["fraction_of_peak"] and row["gemm_peak_gflops"] > 0
    assert "| resnet18 |" in markdown([row])


def test_fp16_training_row_on_the_cpu_scales_without_a_cuda_warning() -> None:
    import warnings

    cfg = BenchConfig("resnet18", "train", batch_size=2, input_size=16, warmup=1, iters=1,
                      precision="fp16", device="cpu")  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        row = run_row(cfg)
    assert row["images_per_s"] > 0
    assert not [w for w in caught if "cuda" in str(w.message).lower()]


def test_bench_row_with_merged_groups(monkeypatch) -> None:
    import resnext.inference.bench

    merged: list[int] = []  # what the harness merged, layer counts per call

    def spy(model: torch.nn.Module) -> int:
        merged.append(merge_small_groups(model))
        return merged[-1]

    monkeypatch.setattr(resnext.inference.bench, "merge_small_groups", spy)
    cfg = BenchConfig("resnext11_8x12d_p16", "train", batch_size=2, warmup=1, iters=1,
                      layout="nhwc", merge_groups=True)  # fmt: skip
    row = run_row(cfg)
    assert merged == [1] and row["images_per_s"] > 0  # ours merged once; the reference not
    assert "eager + merged groups" in markdown([row])


def test_bench_cli_json_is_a_switch_and_out_writes_the_file(tmp_path, capsys) -> None:
    out = tmp_path / "rows.json"
    argv = ["bench", "--models", "resnext29_1x64d", "--batch-size", "2", "--input-size", "8",
            "--iters", "2", "--warmup", "1", "--form", "b", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads(out.read_text())
    assert rows[0]["form"] == "b" and rows[0]["model"] == "resnext29_1x64d"
    assert "| resnext29_1x64d |" in capsys.readouterr().out
    assert main([*argv[:-2], "--json"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["model"] for r in printed] == ["resnext29_1x64d"]
    assert main(["bench", "--batch-size", "0"]) == 2
    assert main(["bench", "--backend", "onnxruntime", "--mode", "train"]) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_bench_on_a_missing_gpu_is_one_line_like_train(tmp_path, capsys) -> None:
    assert main(["bench", "--device", "cuda", "--models", "resnet18"]) == 2
    bench = capsys.readouterr().err
    assert main(["train", "--recipe", "tiny", "--set", "device=cuda", "--out", str(tmp_path)]) == 2
    train = capsys.readouterr().err
    assert bench == train == "resnext: error: device=cuda but no CUDA device is available\n"


def test_fp16_on_the_cpu_has_no_gemm_peak() -> None:
    """CPUs have no fp16 GEMM: the share of a peak is n/a, not a fallback's 3879%."""
    assert peak_precision("fp16", "cpu") is None and peak_precision("fp16", "cuda") is not None
    assert peak_precision("bf16", "cpu") == torch.bfloat16
    cfg = BenchConfig("resnet18", "infer", batch_size=2, precision="fp16", input_size=16,
                      warmup=1, iters=1, backend="torch")  # fmt: skip
    row = run_row(cfg)
    assert row["gemm_peak_gflops"] is None and row["fraction_of_peak"] is None
    assert "(n/a) |" in markdown([row])
