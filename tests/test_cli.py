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


def test_design_refuses_a_cardinality_no_width_can_balance(capsys) -> None:
    """Past C ~ 143, even d = 1 costs more than ResNet-50; C = 3000 would be 21x its MACs."""
    assert main(["design", "--cardinality", "3000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no width keeps C=3000 within 10%" in err
    assert err.rstrip().endswith("the nearest C that can is 143")


@pytest.mark.parametrize("command", ["train", "study", "bench", "info", "design"])
def test_help_shows_defaults_and_choices_come_from_the_config_types(command, capsys) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: " in text
    if command in ("train", "study"):
        assert "{folder,wds,parquet,cifar10,cifar100,digits}" in text  # typing.get_args(Dataset)
    if command == "bench":
        assert "--json print one JSON object per row" in text and "{auto,cpu,cuda}" in text


def test_every_flag_means_one_thing_in_every_subcommand() -> None:
    """A flag shared by subcommands takes the same kind of value everywhere (--json a switch)."""
    from resnext.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and "train" in a.choices).choices
    kinds: dict[str, set] = {}
    for p in sub.values():
        for a in p._actions:
            for flag in a.option_strings:
                kinds.setdefault(flag, set()).add((a.nargs, a.const, type(a).__name__))
    assert kinds["--json"] == {(0, True, "_StoreTrueAction")}
    mixed = {f: k for f, k in kinds.items() if len(k) > 1 and f not in ("-h", "--help")}
    assert not mixed, mixed
