"""Every command the README and docs/ show in a code block is one that runs: ``fishbench ...``
parses with the CLI's own parser (a sweep's overrides also compose with Hydra), ``make ...``
passes ``make -n``, and ``python -m <module>`` names a module that exists.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
PREFIXES = ("uv run --frozen ", "uv run ")
PACKAGES = ("engine", "harness", "serving", "ui")  # python -m of others (pip) is the system's


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _shell_lines(text: str) -> list[str]:
    """The lines of every fenced code block, continuations joined, comments and prompts cut."""
    lines = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].split("  #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def _without_env(words: list[str]) -> list[str]:
    """``VAR=value cmd ...`` -> ``cmd ...`` (assignments before the command)."""
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        words = words[1:]
    return words


def documented_commands() -> list[tuple[str, list[str]]]:
    """(page, words) of each fishbench, make and python -m command in a code block."""
    found = []
    for page in _pages():
        for line in _shell_lines(page.read_text()):
            for prefix in PREFIXES:
                line = line.replace(prefix, "")
            try:
                words = _without_env(shlex.split(line.split("|")[0].split("&&")[0]))
            except ValueError:
                continue
            ours = words[1:2] == ["-m"] and words[2].split(".")[0] in PACKAGES
            if words[:1] == ["fishbench"] or words[:1] == ["make"] or ours:
                found.append((page.relative_to(ROOT).as_posix(), words))
    return found


COMMANDS = documented_commands()


def test_the_extractor_finds_the_commands_the_pages_show() -> None:
    """A broken fence pattern would find nothing and pass every check below."""
    kinds = {words[0] for _, words in COMMANDS}
    assert {"fishbench", "make"} <= kinds and len(COMMANDS) >= 20, kinds


@pytest.mark.parametrize(
    ("page", "words"), COMMANDS, ids=[f"{page}: {' '.join(w)[:60]}" for page, w in COMMANDS]
)
def test_a_documented_command_is_one_that_runs(page: str, words: list[str]) -> None:
    if words[0] == "fishbench":
        from harness.cli import build_parser

        args = build_parser().parse_args(words[1:])  # SystemExit(2) on anything it refuses
        if args.command == "sweep":
            from harness.sweep.compose import build_config

            build_config(args.overrides, args.multirun)
    elif words[0] == "make":
        done = subprocess.run(
            ["make", "-n", *words[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
    else:
        module = words[2]
        assert importlib.util.find_spec(module) is not None, f"no module {module}"
