"""Run every example in README.md and docs/ so that a stale example fails.

Two kinds of fenced block are checked:

* ``python`` blocks run, each on its own, in a fresh Python process and a
  fresh directory, so an example that forks or daemonizes cannot disturb
  the test run;
* ``console`` blocks hold ``$ command`` lines, each followed by its expected
  output. The commands run in a shell in the same kind of fresh directory and
  their combined stdout and stderr must match, after every run of digits is
  replaced by ``N`` on both sides (PIDs, times and inode numbers differ
  between runs).

Examples write their PID files under ``/run``. So that tests never touch the
real ``/run``, every ``/run/`` in a block is rewritten to a private
directory of the test, created with mode 0700 before the block runs. A block
preceded by ``<!-- not-tested: reason -->`` is skipped, with the reason
shown in the test id.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(
    r"(?P<marker><!-- not-tested: (?P<reason>[^>]*) -->\n)?"
    r"```(?P<lang>[a-z]*)\n(?P<body>.*?)```",
    re.DOTALL,
)
COMMAND_TIMEOUT = 60


class Example(NamedTuple):
    document: Path
    line: int
    lang: str
    body: str
    skip_reason: str


def _examples() -> list[Example]:
    found = []
    for document in DOCUMENTS:
        text = document.read_text()
        for match in FENCE.finditer(text):
            lang = match["lang"]
            if lang not in ("python", "console"):
                continue
            line = text.count("\n", 0, match.start("lang")) + 1
            found.append(
                Example(document, line, lang, match["body"], match["reason"] or "")
            )
    return found


def _id(example: Example) -> str:
    return f"{example.document.name}:{example.line}"


PYTHON_EXAMPLES = [e for e in _examples() if e.lang == "python"]
CONSOLE_EXAMPLES = [e for e in _examples() if e.lang == "console"]


def _sandbox(tmp_path: Path) -> tuple[Path, Path]:
    """Make a working directory and a private stand-in for /run."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    return work, run


def _rewrite(body: str, run: Path) -> str:
    return body.replace("/run/", f"{run}/")


def _normalize(text: str) -> list[str]:
    lines = [re.sub(r"\d+", "N", line.rstrip()) for line in text.splitlines()]
    return [line for line in lines if line]


def _bin_dir() -> str:
    """Directory holding the ``pidsafe`` script of this interpreter's venv."""
    script = shutil.which("pidsafe", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.fail("the pidsafe command is not installed next to the interpreter")
    return str(Path(script).parent)


@pytest.mark.parametrize("example", PYTHON_EXAMPLES, ids=_id)
def test_python_example(example: Example, tmp_path: Path) -> None:
    if example.skip_reason:
        pytest.skip(example.skip_reason)
    work, run = _sandbox(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", _rewrite(example.body, run)],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr


class Command(NamedTuple):
    text: str
    expected: str


def _commands(body: str) -> list[Command]:
    commands: list[Command] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            commands.append(Command(line[2:], ""))
        elif commands:
            last = commands[-1]
            commands[-1] = last._replace(expected=last.expected + line + "\n")
    return commands


@pytest.mark.parametrize("example", CONSOLE_EXAMPLES, ids=_id)
def test_console_example(example: Example, tmp_path: Path) -> None:
    if example.skip_reason:
        pytest.skip(example.skip_reason)
    work, run = _sandbox(tmp_path)
    env = {**os.environ, "PATH": f"{_bin_dir()}:{os.environ['PATH']}"}
    for command in _commands(example.body):
        done = subprocess.run(
            ["sh", "-c", _rewrite(command.text, run)],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        actual = done.stdout.replace(f"{run}/", "/run/")
        assert _normalize(actual) == _normalize(command.expected), command.text


def test_examples_found() -> None:
    assert PYTHON_EXAMPLES, "no python examples found in README.md or docs/"


def _readme_demo_output() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("```text\nA real background process")
    return text[start + len("```text\n") : text.index("```", start + 8)]


def test_demo_output_matches_readme() -> None:
    env = {**os.environ, "PATH": f"{_bin_dir()}:{os.environ['PATH']}"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "demo" / "demo.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert _normalize(done.stdout) == _normalize(_readme_demo_output())
