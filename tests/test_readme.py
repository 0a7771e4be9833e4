"""The README's quick commands run as written, on the bundled reader (as litgpt tests its README)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infini_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def quick_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text[text.index("<!-- test: quick commands -->"):]
    body = re.search(r"```\n(.*?)```", block, re.S).group(1)
    return [line for line in body.splitlines() if line.startswith("infini ")]


def test_the_readme_lists_quick_commands():
    cmds = quick_commands()
    assert len(cmds) >= 5 and {shlex.split(c)[1] for c in cmds} >= {"passkey-test", "ask", "summarize", "models"}


@pytest.mark.slow
@pytest.mark.parametrize("command", quick_commands())
def test_readme_command_runs(command, monkeypatch):
    args = shlex.split(command)[1:]
    if args[0] == "babilong" and not (SHARED / "babi").exists():
        pytest.skip("../shared/data/babi is absent")
    monkeypatch.chdir(ROOT)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
