"""The README's promise for bad input, as one set of checks shared by the test_bad_input*.py files: exit code
2, exactly one stderr line `error: ...` naming the file, no traceback, no input changed, no output or temp
file left. Commands run in-process through click's runner (the real CLI), or in a child process where the
process itself matters (signals, import blockers)."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from valle_export.cli import main

REPO = Path(__file__).resolve().parent.parent


def tree_state(*roots: Path) -> dict[str, str]:
    """Every path under `roots` (hidden ones included) -> sha256 of its bytes, or 'dir'. Equal before and
    after a refused command means: no input changed, and no output or temp file appeared."""
    state = {}
    for root in roots:
        root = Path(root)
        paths = [root, *root.rglob("*")] if root.is_dir() else [root]
        for p in paths:
            if p.is_dir():
                state[str(p)] = "dir"
            elif p.exists():
                state[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return state


def invoke(*args):
    """Run the CLI in-process with stdout and stderr apart (click 8.2+ always; 8.1 when asked)."""
    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    return runner.invoke(main, [str(a) for a in args])


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def check_one_line(code: int, stdout: str, stderr: str, quiet: bool, *needles: str) -> str:
    """Exit code 2, one `error:` line (the only stderr line when progress is off), no traceback; returns it."""
    assert code == 2, f"exit code {code}\nstdout: {stdout}\nstderr: {stderr}"
    assert "Traceback" not in stdout + stderr, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1, f"expected one error line, got:\n{stderr}"
    if quiet:
        assert stderr.strip().splitlines() == lines, f"more than the error line on stderr:\n{stderr}"
    for needle in needles:
        assert str(needle) in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def assert_one_line_error(result, *needles) -> str:
    """For any click runner result (stderr mixed in or not): the command exited through sys.exit(2), not an
    escaped exception, with one `error:` line holding every needle."""
    assert isinstance(result.exception, SystemExit), f"unexpected exception: {result.exception!r}\n{result.output}"
    return check_one_line(result.exit_code, "", result.output, False, *needles)


def refused(roots: list[Path], *args, needles=()) -> str:
    """Run a command that must be refused: one line naming what is wrong, and nothing under `roots` changed.
    Returns the error line."""
    before = tree_state(*roots)
    result = invoke(*args)
    assert isinstance(result.exception, SystemExit), f"unexpected exception: {result.exception!r}\n{result.output}"
    stderr = result.stderr
    quiet = "-q" in [str(a) for a in args]
    line = check_one_line(result.exit_code, result.stdout, stderr, quiet, *needles)
    after = tree_state(*roots)
    changed = sorted(set(before.items()) ^ set(after.items()))
    assert not changed, f"refused command changed files: {changed[:6]}"
    return line


def child_env() -> dict[str, str]:
    """Environment of a child process that imports this checkout's code (never an installed copy)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_child(code: str, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -c code args...` in a fresh interpreter with this checkout on the path."""
    return subprocess.run([sys.executable, "-c", code, *[str(a) for a in args]], capture_output=True, text=True,
                          env=child_env(), timeout=timeout, cwd=REPO)
