"""The README and docs/ stay true to the code: every `resnext` command line they show parses with
the command's own parser, and every relative link and repository path they name exists.

A command is taken from ```bash blocks (backslash continuations joined, `NAME=value` lines of the
block expanded where `$NAME` is used) and from inline code. Placeholders are read as a user would
fill them in: `...` stands for omitted arguments (or one value), `[--flag]` is optional and is
checked as if given, an upper-case word (`DIR`, `N`, `RUN`) is any value, `a|b` is each choice.
Inline code may quote part of a command, so there a missing required option is not an error.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from resnext.cli import build_parser
from resnext.cli.common import UserError

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(p for p in (ROOT / "docs").glob("*.md"))])
SHELL_BLOCKS = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"(?<!`)`([^`\n]+(?:\n(?!\s*\n)[^`\n]+)*)`(?!`)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
REPO_PATH = re.compile(r"(?<![\w./-])((?:docs|src|tests|benchmarks)/[\w./-]*\w)")
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*")
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "2>", "2>&1", "<"}
FILLER = "1"  # parses as any placeholder: a path, a name, an int, a float


@dataclass(frozen=True)
class Command:
    """One `resnext` command line found in a document."""

    doc: str
    line: int
    text: str
    args: tuple[str, ...]
    inline: bool

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def _outside_fences(text: str) -> str:
    """The text with fenced blocks blanked (newlines kept, so line numbers stay right)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def _shell_commands(block: str) -> list[tuple[int, str]]:
    """(line offset, command) for each command of a shell block: continuations and multi-line
    quotes joined."""
    commands, pending, start = [], "", 0
    for i, line in enumerate(block.splitlines()):
        if not pending:
            start = i
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on on the next line
            pending += "\n"
            continue
        commands.append((start, pending))
        pending = ""
    if pending:
        commands.append((start, pending))
    return commands


def _resnext_args(tokens: list[str]) -> list[str] | None:
    """The arguments after `resnext` (or `python -m resnext.cli`), up to a shell operator."""
    for i, token in enumerate(tokens):
        if token == "resnext" or token.endswith("/resnext"):
            rest = tokens[i + 1 :]
        elif token == "-m" and tokens[i + 1 : i + 2] == ["resnext.cli"]:
            rest = tokens[i + 2 :]
        else:
            continue
        for j, arg in enumerate(rest):
            if arg in SHELL_OPERATORS:
                return rest[:j]
        return rest
    return None


def _expand(tokens: list[str], variables: dict[str, str]) -> list[str]:
    """`$NAME` and `${NAME}` replaced by the block's value for NAME, split as a shell does."""
    out = []
    for token in tokens:
        name = re.fullmatch(r"\$\{?(\w+)\}?", token)
        if name and name.group(1) in variables:
            out.extend(variables[name.group(1)].split())
        else:
            out.append(token)
    return out


def _commands(path: Path) -> list[Command]:
    text = path.read_text(encoding="utf-8")
    doc = path.relative_to(ROOT).as_posix()
    found = []
    for block in FENCE.finditer(text):
        if block.group(1) not in SHELL_BLOCKS:
            continue
        first = text.count("\n", 0, block.start(2)) + 1
        variables: dict[str, str] = {}
        for offset, command in _shell_commands(block.group(2)):
            tokens = shlex.split(command, comments=True)
            assignment = re.fullmatch(r"(\w+)=(.*)", tokens[0], re.S) if tokens else None
            if assignment and len(tokens) == 1:
                variables[assignment.group(1)] = assignment.group(2)
                continue
            args = _resnext_args(_expand(tokens, variables))
            if args is not None:
                line = " ".join(command.split())
                found.append(Command(doc, first + offset, line, tuple(args), inline=False))
    prose = _outside_fences(text)
    for span in INLINE.finditer(prose):
        try:
            tokens = shlex.split(span.group(1))
        except ValueError:
            continue
        args = _resnext_args(tokens)
        if args:
            line = prose.count("\n", 0, span.start()) + 1
            found.append(Command(doc, line, " ".join(span.group(1).split()), tuple(args), True))
    return found


def _variants(args: tuple[str, ...]) -> list[list[str]]:
    """The argument lists a line with placeholders stands for."""
    tokens = [t.removeprefix("[").removesuffix("]") for t in args]
    tokens = [t for t in tokens if t not in ("", "-h", "--help")]
    choices = [i for i, t in enumerate(tokens) if "|" in t and "=" not in t]
    lists = [tokens]
    for i in choices:
        lists = [[*t[:i], alt, *t[i + 1 :]] for t in lists for alt in tokens[i].split("|")]
    # `...` is omitted arguments, or a value left out: try both readings.
    out = []
    for t in lists:
        out.append([a for a in t if a != "..."])
        if "..." in t:
            out.append([FILLER if a == "..." else a for a in t])
    return out


def _parse(parser, args: list[str], inline: bool) -> str | None:
    """None if `args` parse, else argparse's complaint. A placeholder that argparse rejects as a
    value (`--seed S`, `--input-size N`) is filled in and the line parsed again."""
    args = list(args)
    for _ in range(len(args) + 1):
        try:
            parser.parse_args(args)
            return None
        except (UserError, SystemExit) as e:
            message = str(e)
        if inline and "the following arguments are required" in message:
            return None  # a part of a command, quoted in prose
        if inline and "expected one argument" in message and args[-1].startswith("-"):
            args.append(FILLER)  # `resnext train --init` names an option in prose
            continue
        bad = re.search(r"(?:invalid \w+ value|got): '([^']*)'", message)
        if not bad or not PLACEHOLDER.fullmatch(bad.group(1)) or bad.group(1) not in args:
            return message
        args[args.index(bad.group(1))] = FILLER
    return message


COMMANDS = [c for path in DOCS for c in _commands(path)]


def test_the_docs_show_commands():
    """The search finds the commands (a broken pattern would pass every check vacuously)."""
    assert len(COMMANDS) > 40
    assert any(c.doc.startswith("docs/") and not c.inline for c in COMMANDS)
    assert any(c.inline for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_each_command_parses(command):
    parser = build_parser()
    errors = [e for v in _variants(command.args) if (e := _parse(parser, v, command.inline))]
    readings = len(_variants(command.args))
    # `...` read two ways: one reading that parses is enough.
    ok = len(errors) < readings if "..." in command.args else not errors
    assert ok, f"{command}\n  resnext: error: {errors[0]}"


def _links(path: Path) -> list[tuple[int, str]]:
    prose = INLINE.sub(lambda m: "\n" * m.group(0).count("\n"), _outside_fences(path.read_text()))
    found = []
    for m in LINK.finditer(prose):
        target = m.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        found.append((prose.count("\n", 0, m.start()) + 1, target.split("#")[0]))
    return found


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_name_files_that_exist(path):
    missing = [
        f"line {line}: {target}"
        for line, target in _links(path)
        if not (path.parent / target).exists()
    ]
    assert not missing, f"{path.name} links to files that do not exist: {missing}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_repository_paths_named_exist(path):
    """`docs/...`, `src/...`, `tests/...` and `benchmarks/...` named anywhere (prose, code,
    comments) are files or folders of the repository."""
    missing = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        for m in REPO_PATH.finditer(line):
            if not (ROOT / m.group(1)).exists():
                missing.append(f"line {number}: {m.group(1)}")
    assert not missing, f"{path.name} names paths that do not exist: {missing}"
