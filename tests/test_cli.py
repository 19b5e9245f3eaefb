"""`resnext info` and `resnext design`: output, JSON, one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from resnext.cli import main


def test_console_script_info_json() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "resnext.cli", "info", "resnext50_32x4d", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    row = json.loads(out)
    assert (row["params"], row["macs"]) == (25_028_904, 4_230_480_872)
    assert row["activations"] > 0 and row["input_size"] == 224


def test_info_table_lists_every_model(capsys: pytest.CaptureFixture[str]) -> None:
    from resnext import list_models

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert all(f"| {name} |" in out for name in list_models())
    assert "| resnet50 | 224 | 25,557,032 | 4.09 |" in out


def test_info_cifar_defaults_to_32(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "resnext29_8x64d", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["input_size"] == 32 and row["params"] == 34_426_698


@pytest.mark.parametrize(
    "depth, cardinality, d", [(50, 32, 4), (50, 8, 14), (101, 2, 40), (29, 4, 24), (50, 1, 64)]
)
def test_design_json(
    depth: int, cardinality: int, d: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["design", "--depth", str(depth), "--cardinality", str(cardinality), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["cardinality"], result["d"]) == (cardinality, d)
    assert abs(result["macs"] / result["baseline_macs"] - 1) < 0.05


@pytest.mark.parametrize(
    "argv, message",
    [
        (["info", "resnext50_32x4"], "did you mean resnext50_32x4d"),
        (["info", "resnet50", "--input-size", "0"], "--input-size must be positive"),
        (["design", "--cardinality", "0"], "--cardinality must be positive"),
        (["design", "--depth", "34", "--cardinality", "2"], "--depth must be one of"),
        (["design"], "required: --cardinality"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_user_errors_are_one_line_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
