"""Running AArch64 TVM libraries on another machine: qemu-user and a Debian arm64 root.

The emulation root holds Debian bookworm's arm64 Python 3.11 (with the libraries it and
TVM link against) and the aarch64 wheels of apache-tvm, apache-tvm-ffi and numpy, unpacked
side by side; ``scripts/setup_aarch64_emulation.sh`` builds it. A library is run by a
worker process, ``qemu-aarch64 -L ROOT ROOT/usr/bin/python3.11 runner.py LIB``, that loads
it once with TVM's runtime and then answers one request per call (inputs and outputs pass
as ``.npy`` files), so the emulated TVM import (~10 s) is paid once per compiled model.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from greencc.cache import cache_dir
from greencc.errors import GreenccError, TargetUnavailableError

ROOT_ENV = "GREENCC_AARCH64_ROOT"
SETUP_COMMAND = "scripts/setup_aarch64_emulation.sh"
# Written by the set-up script once the root works: the wheel versions it holds, one
# "name==version" a line. Its absence means the root is missing or half-built.
STAMP_FILE = "opt/greencc/installed.txt"
SITE_PACKAGES = "opt/greencc/site-packages"
PYTHON = "usr/bin/python3.11"
QEMU = "qemu-aarch64"
# Replies of the runner are the stdout lines with this prefix; anything else TVM prints
# there is ignored.
REPLY_PREFIX = "@greencc "
# How long the worker may take to import TVM and load the library, s (measured: ~10 s for
# the import and ~1 s to load MiniLM under qemu 7.2 on a 2-core x86 VM).
START_TIMEOUT_S = 600.0

# Runs inside the emulated Python: TVM's runtime only (TVM_USE_RUNTIME_LIB skips the
# compiler library, which halves the emulated import), greencc itself is not there.
RUNNER_SOURCE = r'''
import json, os, sys, time, traceback
os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
os.environ.setdefault("TVM_BIND_THREADS", "0")
import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine

PREFIX = "@greencc "


def reply(message):
    sys.stdout.write(PREFIX + json.dumps(message) + "\n")
    sys.stdout.flush()


def main():
    import platform
    library = tvm.runtime.load_module(sys.argv[1])
    entry = VirtualMachine(library, tvm.cpu())["main"]
    configure = tvm.get_global_func("runtime.config_threadpool")
    threads = None
    reply({"ready": True, "tvm": tvm.__version__, "machine": platform.machine()})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if request.get("threads") and request["threads"] != threads:
                threads = int(request["threads"])
                configure(1, threads)
            args = [tvm.runtime.tensor(np.load(path, allow_pickle=False)) for path in request["inputs"]]
            started = time.perf_counter()
            result = entry(*args)
            run_ms = (time.perf_counter() - started) * 1e3
            values = [result] if isinstance(result, tvm.runtime.Tensor) else list(result)
            paths = []
            for index, value in enumerate(values):
                path = os.path.join(request["output_dir"], f"output{index}.npy")
                np.save(path, value.numpy())
                paths.append(path)
            reply({"ok": True, "outputs": paths, "run_ms": run_ms})
        except Exception as exc:
            lines = [l.strip() for l in str(exc).splitlines() if l.strip()]
            reply({"ok": False, "error": f"{type(exc).__name__}: {lines[-1] if lines else ''}",
                   "traceback": traceback.format_exc()})


main()
'''


def host_machine() -> str:
    """This machine's architecture as Linux names it (``x86_64``, ``aarch64``)."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def needs_emulation() -> bool:
    """True when AArch64 code cannot run natively here (the host is not aarch64)."""
    return host_machine() != "aarch64"


def qemu_path() -> str | None:
    """Absolute path of ``qemu-aarch64`` on ``PATH``, or ``None``."""
    return shutil.which(QEMU)


def emulation_root() -> Path:
    """Where the arm64 root lives: ``$GREENCC_AARCH64_ROOT``, else
    ``$GREENCC_CACHE_DIR/aarch64-root`` (default ``~/.cache/greencc/aarch64-root``)."""
    given = os.environ.get(ROOT_ENV)
    if given:
        return Path(given).expanduser()

    return cache_dir() / "aarch64-root"


def setup_hint(root: Path | None = None) -> str:
    """The command that builds the emulation root at ``root`` (default :func:`emulation_root`)."""
    root = emulation_root() if root is None else root
    return f"build it with `{SETUP_COMMAND} {root}` from a greencc checkout (needs root for apt-get)"


def root_problem(root: Path | None = None) -> str:
    """Why the emulation root at ``root`` (default :func:`emulation_root`) cannot run TVM
    libraries, or ``""`` when it can: missing, half-built, or holding another TVM version
    than the one compiling here."""
    root = emulation_root() if root is None else root
    stamp = root / STAMP_FILE
    if not (root / PYTHON).is_file() or not stamp.is_file():
        return f"the arm64 emulation root {root} is missing or incomplete"
    wanted = _host_tvm_version()
    if wanted is not None:
        installed = dict(
            line.split("==", 1) for line in stamp.read_text(encoding="utf-8").split() if "==" in line
        )
        have = installed.get("apache-tvm")
        if have != wanted:
            return (f"the arm64 emulation root {root} holds apache-tvm {have}, but libraries are "
                    f"compiled here by apache-tvm {wanted}")
    return ""


def _host_tvm_version() -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version("apache-tvm")
    except importlib.metadata.PackageNotFoundError:
        return None


class EmulatedRunner:
    """A worker running one AArch64 TVM library under ``qemu-aarch64``.

    Started by :meth:`start` (or the first :meth:`run`); ``close`` (or garbage collection
    of its owner) stops it. Calls are serialised: one request at a time per worker.
    ``last_run_ms`` is the emulated VM call's own time (ms), without file transfer.
    """

    def __init__(self, library: Path, *, root: Path | None = None) -> None:
        self.library = Path(library)
        self.root = emulation_root() if root is None else Path(root)
        self.last_run_ms: float | None = None
        self.start_s: float | None = None
        self._process: subprocess.Popen[str] | None = None
        self._workdir: Path | None = None
        self._stderr: object | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the emulated worker and wait until it has loaded the library.

        Raises ``TargetUnavailableError`` naming the set-up command when qemu or the
        emulation root is missing, and ``GreenccError`` when the worker fails to start.
        """
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        qemu = qemu_path()
        if qemu is None:
            raise TargetUnavailableError(
                f"running AArch64 code on this {host_machine()} machine needs {QEMU}, which is "
                "not installed",
                hint="apt-get install qemu-user",
            )
        problem = root_problem(self.root)
        if problem:
            raise TargetUnavailableError(
                f"cannot run the AArch64 model under emulation: {problem}",
                hint=setup_hint(self.root),
            )
        self._workdir = Path(tempfile.mkdtemp(prefix="greencc-aarch64-run-"))
        runner = self._workdir / "runner.py"
        runner.write_text(RUNNER_SOURCE, encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env.update(PYTHONPATH=str(self.root / SITE_PACKAGES), PYTHONNOUSERSITE="1",
                   PYTHONDONTWRITEBYTECODE="1")
        stderr = open(self._workdir / "stderr.txt", "w+", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._stderr = stderr
        command = [qemu, "-L", str(self.root), str(self.root / PYTHON), str(runner), str(self.library)]
        started = time.perf_counter()
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
            text=True, env=env, cwd=self._workdir,
        )
        reply = self._read_reply(timeout_s=START_TIMEOUT_S)
        if not reply.get("ready"):
            self._close_locked()
            raise GreenccError(
                f"the emulated TVM runtime could not load {self.library.name}: {reply.get('error')}",
                hint=f"re-run {SETUP_COMMAND}; if it persists, report it with the model",
            )
        self.start_s = time.perf_counter() - started

    def run(self, arrays: Sequence[np.ndarray], *, threads: int) -> list[np.ndarray]:
        """Run the library's ``main`` on ``arrays`` (in input order) with ``threads`` runtime
        threads; returns its outputs in order."""
        with self._lock:
            self._start_locked()
            assert self._workdir is not None
            request_dir = Path(tempfile.mkdtemp(prefix="call-", dir=self._workdir))
            try:
                inputs = []
                for index, array in enumerate(arrays):
                    path = request_dir / f"input{index}.npy"
                    np.save(path, np.ascontiguousarray(array))
                    inputs.append(str(path))
                request = {"inputs": inputs, "output_dir": str(request_dir), "threads": int(threads)}
                assert self._process is not None and self._process.stdin is not None
                try:
                    self._process.stdin.write(json.dumps(request) + "\n")
                    self._process.stdin.flush()
                except (BrokenPipeError, OSError):
                    pass  # the read below reports the dead worker with its stderr
                reply = self._read_reply(timeout_s=None)
                if not reply.get("ok"):
                    raise GreenccError(
                        f"the AArch64 model failed under emulation: {reply.get('error')}",
                        hint="please report it with the model; compile for ort-cpu meanwhile",
                    )
                self.last_run_ms = float(reply["run_ms"])
                return [np.load(path, allow_pickle=False) for path in reply["outputs"]]
            finally:
                shutil.rmtree(request_dir, ignore_errors=True)

    def _read_reply(self, *, timeout_s: float | None) -> dict:
        assert self._process is not None and self._process.stdout is not None
        timer = None
        if timeout_s is not None:
            timer = threading.Timer(timeout_s, self._process.kill)
            timer.start()
        try:
            for line in self._process.stdout:
                if line.startswith(REPLY_PREFIX):
                    return json.loads(line[len(REPLY_PREFIX):])
        finally:
            if timer is not None:
                timer.cancel()
        code = self._process.wait()
        tail = self._stderr_tail()
        self._close_locked()
        raise GreenccError(
            f"the emulated AArch64 worker exited (status {code}) before answering: {tail}",
            hint=f"check that `{QEMU}` runs and re-run {SETUP_COMMAND}",
        )

    def _stderr_tail(self) -> str:
        try:
            text = (self._workdir / "stderr.txt").read_text(encoding="utf-8", errors="replace") if self._workdir else ""
        except OSError:
            text = ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else "no error output"

    def close(self) -> None:
        """Stop the worker and remove its temporary files (safe to call twice)."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.stdin is not None:
                try:
                    process.stdin.close()
                except OSError:
                    pass
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()  # type: ignore[attr-defined]
            self._stderr = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __del__(self) -> None:
        try:
            self._close_locked()
        except Exception:  # noqa: S110 - interpreter shutdown: nothing left to report to
            pass


__all__ = [
    "EmulatedRunner", "ROOT_ENV", "SETUP_COMMAND", "emulation_root", "host_machine",
    "needs_emulation", "qemu_path", "root_problem", "setup_hint",
]
