"""Every command the README and docs/ show in a code block is one the tools accept as written.

A `miniaturize ...` line is parsed by the CLI's own parser (command, options, option values, argument
count) without running it; a `make X` line names a Makefile target; a bundle's `python predict.py ...` or
`python generate.py ...` line is parsed by that script's argparse. Placeholders (`N`, `NAME`, `<hex>`,
`...`) stand for values and parse like them.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import typer

from flows.cli import app

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.S | re.M)


def code_lines(path: Path) -> list[str]:
    """The command lines of a page's fenced blocks: comments dropped, `\\` continuations joined."""
    lines, pending = [], ""
    for block in FENCE.findall(path.read_text()):
        for raw in block.splitlines():
            line = pending + raw.split("  #")[0].strip()
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            pending = ""
            line = re.sub(r"^(\$ |\.venv/bin/)", "", line)
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def commands(prefix: str) -> list[tuple[str, str]]:
    return [(path.name, line) for path in DOCS for line in code_lines(path) if line.split()[0] == prefix]


def test_the_pages_show_commands_at_all():
    assert len(commands("miniaturize")) >= 15 and len(commands("make")) >= 5


@pytest.mark.parametrize(("page", "line"), commands("miniaturize"), ids=lambda v: v[:60])
def test_each_miniaturize_command_parses(page, line):
    args = shlex.split(line.replace("...", "x"))[1:]
    group = typer.main.get_command(app)
    if args == ["--help"]:
        return
    name, *rest = args
    command = group.get_command(click.Context(group), name)
    assert command is not None, f"{page}: no command {name!r} in: {line}"
    if "--help" in rest:
        return
    try:
        command.make_context(name, rest, parent=click.Context(group, info_name="miniaturize"))
    except click.UsageError as error:  # BadParameter, NoSuchOption, MissingParameter, too many arguments
        pytest.fail(f"{page}: `{line}` does not parse: {error.format_message()}")


def makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([a-z][a-z-]*):", text, re.M)}


@pytest.mark.parametrize(("page", "line"), commands("make"), ids=lambda v: v[:60])
def test_each_make_command_names_a_target(page, line):
    targets = [word for word in shlex.split(line)[1:] if "=" not in word]
    assert targets and set(targets) <= makefile_targets(), f"{page}: unknown make target in: {line}"


def edge_script_parser(source: Path):
    """The argparse parser a bundle script builds, taken without running the rest of its main()."""
    import argparse
    import importlib.util

    class Parsed(Exception):
        pass

    captured = {}

    def capture(self, args=None, namespace=None):
        captured["parser"] = self
        raise Parsed

    spec = importlib.util.spec_from_file_location("bundle_script", source)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # defines only: main() runs under `if __name__ == "__main__"`
    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture
    try:
        script.main([])
    except Parsed:
        pass
    finally:
        argparse.ArgumentParser.parse_args = original
    return captured["parser"]


def parses(parser, args: list[str]) -> bool:
    try:
        parser.parse_args(args)
    except SystemExit:
        return False
    return True


@pytest.mark.parametrize(
    ("page", "line"),
    [c for c in commands("python") if re.match(r"python [\w/]*predict\.py", c[1])],
    ids=lambda v: v[:60],
)
def test_each_bundle_command_parses(page, line):
    """A bundle's script is predict.py for both kinds of bundle: the line must parse for one of them."""
    from components import bundle

    words = shlex.split(line.replace("...", "x").replace("<hex>", "0" * 64))[2:]
    assert any(parses(edge_script_parser(script), words) for script in (bundle.PREDICT, bundle.GENERATE)), (
        f"{page}: `{line}` does not parse"
    )
