"""Help text people can read, and shell completion for bash and zsh."""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from stratus.cli.main import app
from tests.conftest import ROOT, STRATUS


def all_commands() -> list[list[str]]:
    found: list[list[str]] = []

    def walk(cmd: Any, path: list[str]) -> None:
        found.append(path)
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def help_of(path: list[str]) -> str:
    # In process (typer's runner): the same app the `stratus` command runs, without 40 interpreter starts.
    res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200", "TERM": "dumb"}, prog_name="stratus")
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.parametrize("path", all_commands(), ids=lambda p: " ".join(p) or "stratus")
def test_help_has_no_type_tags_and_names_arguments_in_capitals(path: list[str]) -> None:
    text = help_of(path)
    assert not re.search(r"<(bool|str|int|float|list\[\w+\]|path)>", text), text
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and not re.search(r"\b[a-z_]+\.\.\.", usage), usage
    for arg in re.findall(r"\] ([A-Za-z_]+)", usage):
        assert arg == arg.upper(), usage
    if path and path[0] in ("image", "instance") and len(path) == 2:
        assert "http://127.0.0.1:8700" in text and "STRATUS_ENDPOINT" in text  # the endpoint default


def test_every_list_and_show_verb_documents_json() -> None:
    verbs = [p for p in all_commands() if p and p[-1] in ("list", "show", "shares")]
    assert len(verbs) >= 5
    for path in verbs:
        assert "--json" in help_of(path), path


def test_top_level_help_lists_the_exit_codes_and_the_two_kinds_of_verbs() -> None:
    text = " ".join(help_of([]).split())
    assert "5 the server could not be reached" in text and "admin verbs" in text
    assert "Shared CLI setup" not in text  # no module docstring leaking into help


@pytest.mark.parametrize(("shell", "env"), [
    ("bash", {"COMP_WORDS": "stratus ima", "COMP_CWORD": "1"}),
    ("zsh", {"_TYPER_COMPLETE_ARGS": "stratus ima"}),
])
def test_shell_completion_completes_commands(shell: str, env: dict[str, str]) -> None:
    res = subprocess.run([STRATUS], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "_STRATUS_COMPLETE": f"complete_{shell}", **env})
    assert res.returncode == 0 and "image" in res.stdout, res.stderr


def test_show_completion_prints_a_script() -> None:
    res = subprocess.run(["bash", "-c", f"{STRATUS} --show-completion"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "_STRATUS_COMPLETE" in res.stdout


def test_make_run_takes_a_port() -> None:
    res = subprocess.run(["make", "-n", "run", "PORT=8800"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "stratus serve --data-dir ./var --host 127.0.0.1 --port 8800" in res.stdout
