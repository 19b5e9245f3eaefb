"""What a new user reads: `resnext --help`'s examples (each parses), pack's summary, and the
one-line errors of a mistyped config key and of a file data set without --data."""

from __future__ import annotations

import dataclasses
import shlex

import pytest

from resnext.cli import EPILOG, build_parser, main
from resnext.training.config import TrainConfig


def _examples() -> list[list[str]]:
    """The example commands of `resnext --help` (a description follows two spaces)."""
    lines = EPILOG.split("examples:\n")[1].split("\n\n")[0].splitlines()
    lines = [x.strip() for x in lines if x.strip().startswith(("resnext ", "torchrun "))]
    return [shlex.split(line.split("  ")[0]) for line in lines]


def test_help_shows_imagenet_pack_and_torchrun_examples_that_parse():
    examples = _examples()
    assert {c[0] for c in examples} == {"resnext", "torchrun"}
    joined = [" ".join(c) for c in examples]
    assert any("--recipe imagenet" in c for c in joined)
    assert any(c[1] == "pack" for c in examples if c[0] == "resnext")
    for command in examples:
        args = command[1:] if command[0] == "resnext" else command[command.index("-m") + 2 :]
        build_parser().parse_args(args)  # argparse exits on a command it does not know


def test_pack_summary_names_every_source(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("pack"))
    assert "image folder, shards or parquet files" in line


def test_an_unknown_config_key_names_close_ones_and_where_the_keys_are(capsys):
    assert main(["train", "--set", "wieght_decay=0", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean weight_decay" in err
    assert "`resnext train --help` lists the keys" in err
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    listed = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(TrainConfig):
        assert f.name == "recipe" or f"{f.name}," in listed or f"{f.name} " in listed


@pytest.mark.parametrize("dataset", ["wds", "parquet", "folder"])
def test_a_file_data_set_without_data_is_one_line_asking_for_it(dataset, tmp_path, capsys):
    assert main(["train", "--dataset", dataset, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--dataset {dataset} needs --data" in err
    assert not (tmp_path / "run").exists()
