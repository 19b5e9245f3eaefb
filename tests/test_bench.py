"""Fast paths give the plain model's outputs; the benchmark harness runs at tiny sizes."""

from __future__ import annotations

import json

import pytest
import torch

from resnext import build_model, create_model
from resnext.bench import BenchConfig, markdown, run_row, torchvision_reference, train_flops
from resnext.cli import main
from resnext.runtime import OnnxRuntimeModel, optimize_for_inference, tune_allocator

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


def test_allocator_tuning_switches_on_and_off() -> None:
    assert tune_allocator(True) == tune_allocator(False)  # same answer: supported here or not


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


def test_bench_cli_writes_json(tmp_path, capsys) -> None:
    out = tmp_path / "rows.json"
    argv = ["bench", "--models", "resnext29_1x64d", "--batch-size", "2", "--input-size", "8",
            "--iters", "2", "--warmup", "1", "--form", "b", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads(out.read_text())
    assert rows[0]["form"] == "b" and rows[0]["model"] == "resnext29_1x64d"
    assert "resnext29_1x64d" in capsys.readouterr().out
    assert main(["bench", "--batch-size", "0"]) == 2
    assert main(["bench", "--backend", "onnxruntime", "--mode", "train"]) == 2
