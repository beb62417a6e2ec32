"""Runs a fuzz case through ``greencc`` and checks what every hostile input must get: a
documented exit status other than 1, one ``greencc: error:`` line first on stderr (only
warnings after it), no traceback, no control characters on the terminal, inputs untouched,
nothing left behind by a failed command, and memory bounded by an address-space limit.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from greencc.cli import main
from greencc.errors import EXIT_CODES
from tests.fuzz.cases import Invocation

# Address space a case may add to the process (in-process) or use (a subprocess), bytes.
INPROCESS_HEADROOM = 1 << 30
SUBPROCESS_LIMIT = 6 << 30
ROOT = Path(__file__).resolve().parents[2]
# C0 controls but newline and tab, DEL and the C1 controls: what a terminal would act on.
CONTROL = {chr(c) for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))} - {"\n", "\t"}


@dataclass
class Outcome:
    """What a command did: exit status, stdout and stderr text."""

    status: int
    stdout: str
    stderr: str


def snapshot(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (symlinks by their target), by relative path."""
    files: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            files[key] = "-> " + os.readlink(path)
        elif path.is_file():
            files[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            files[key] = "dir"
    return files


def _address_space() -> int:
    """This process's virtual memory size now, bytes."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[0]) * resource.getpagesize()


@contextlib.contextmanager
def memory_limit(headroom: int):
    """Cap this process's address space at its current size plus ``headroom`` bytes while
    the block runs (an allocation beyond raises MemoryError), then lift the cap again."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _address_space() + headroom
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def run_inprocess(invocation: Invocation) -> Outcome:
    """Run ``greencc.cli.main`` on the invocation's argv under :func:`memory_limit`."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), memory_limit(INPROCESS_HEADROOM):
        status = main(invocation.argv)
    return Outcome(status, stdout.getvalue(), stderr.getvalue())


def run_subprocess(invocation: Invocation, timeout_s: float = 120) -> Outcome:
    """Run ``python -m greencc.cli`` in a child limited to :data:`SUBPROCESS_LIMIT` bytes
    of address space; a signal death is reported as the negative signal number."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (SUBPROCESS_LIMIT, SUBPROCESS_LIMIT))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("GREENCC_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "greencc.cli", *invocation.argv], capture_output=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=timeout_s, preexec_fn=limit)
    return Outcome(proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace"))


def problems(outcome: Outcome, invocation: Invocation, before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Every way ``outcome`` breaks the contract for hostile input (empty when it holds).
    ``before`` and ``after`` snapshot the case's folder around the run."""
    found = []
    status, err = outcome.status, outcome.stderr
    if status == 1 or status not in EXIT_CODES:
        found.append(f"exit status {status} (documented, not 1: {sorted(set(EXIT_CODES) - {1})})")
    if "Traceback" in err or "Traceback" in outcome.stdout:
        found.append("a traceback was printed")
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("greencc: error:")]
    if status != 0:
        if len(errors) != 1 or not lines or not lines[0].startswith("greencc: error: "):
            found.append(f"stderr is not one leading 'greencc: error:' line: {err[:300]!r}")
        strays = [line for line in lines[1:] if not line.startswith("greencc: warning: ")]
        if strays:
            found.append(f"stderr has lines other than warnings after the error: {strays[:3]!r}")
    elif errors:
        found.append(f"exit 0 with an error line: {errors[0]!r}")
    for stream, text in (("stdout", outcome.stdout), ("stderr", err)):
        raw = sorted({repr(ch) for ch in text if ch in CONTROL})
        if raw:
            found.append(f"{stream} carries raw control characters {raw}")
    changed = sorted(name for name, digest in before.items() if after.get(name) != digest)
    if changed:
        found.append(f"inputs modified or removed: {changed[:5]}")
    # A failing pass leaves its reproducer on purpose (exit 5; `greencc repro DIR`).
    added = sorted(name for name in set(after) - set(before)
                   if not (status == 5 and _is_reproducer(Path(name).parts[0])))
    if status != 0:
        if added:
            found.append(f"a failed command left files behind: {added[:5]}")
    elif invocation.output is not None and not invocation.output.is_dir():
        found.append("exit 0 without the output directory")
    return found


def _is_reproducer(top: str) -> bool:
    """Whether a top-level name under a case's folder is a reproducer a failing pass wrote:
    ``greencc-repro-*`` beside the output, or the ``--repro-dir`` the options generator names."""
    return top.startswith("greencc-repro-") or top == "r"
