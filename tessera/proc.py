"""Running long external tools (Verilator + make, Yosys, nextpnr) so that they die with us.

:func:`run_logged` starts the command in a new session (its own process group) with its output
appended to a log file, and makes sure that no process of that group outlives the call:

- on any exception in the caller while waiting (``KeyboardInterrupt``, a timeout), the whole
  group gets SIGTERM, then SIGKILL;
- the direct child has ``PR_SET_PDEATHSIG`` (Linux): it is killed if this process dies;
- a watchdog (``/bin/sh``, also its own session) holds the read end of a pipe whose write end
  only this process has; if this process dies, even by SIGKILL, the watchdog sees end-of-file,
  kills the group and removes the ``cleanup`` directories (a build's temporary directory).

The grandchildren (``make``'s compilers) are not covered by ``PR_SET_PDEATHSIG`` (it does not
survive ``fork``), which is why the watchdog kills the group.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tessera.errors import TesseraError

__all__ = ["run_logged", "ToolFailed", "kill_group"]

_PR_SET_PDEATHSIG = 1


class ToolFailed(TesseraError):
    """A command exited with a non-zero status; ``log`` is the file holding its output."""

    def __init__(self, message: str, returncode: int, log: Path):
        super().__init__(message)
        self.returncode = returncode
        self.log = log


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def kill_group(pgid: int, grace: float = 2.0) -> None:
    """SIGTERM the process group ``pgid``, then SIGKILL whatever is left after ``grace`` s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def _watchdog(pgid: int, cleanup: Sequence[Path]) -> tuple[subprocess.Popen, int]:
    """A shell that kills group ``pgid`` and removes ``cleanup`` when our pipe end closes."""
    rm = " ".join(shlex.quote(str(p)) for p in cleanup)
    script = f"read _ignored; kill -KILL -{pgid} 2>/dev/null; " + (f"rm -rf {rm}" if rm else ":")
    r, w = os.pipe()
    try:
        dog = subprocess.Popen(["/bin/sh", "-c", script], stdin=r, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True,
                               close_fds=True)
    finally:
        os.close(r)
    os.set_inheritable(w, False)
    return dog, w


def run_logged(cmd: Sequence[str], *, cwd: Path, env: dict[str, str] | None, log: Path,
               what: str, timeout: float | None = None,
               cleanup: Sequence[Path] = ()) -> None:
    """Run ``cmd`` (its output appended to ``log``) in its own process group; return when it
    succeeded. Raises :class:`ToolFailed` (naming ``what`` and ``log``) on a non-zero exit or
    when ``timeout`` seconds pass; the group never outlives the call (see the module doc)."""
    cmd = [str(c) for c in cmd]
    with open(log, "ab") as fh:
        fh.write(("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n").encode())
        fh.flush()
        try:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=_die_with_parent)
        except OSError as exc:
            raise ToolFailed(f"{what}: cannot run {cmd[0]}: {exc}", -1, log) from None
        dog, dog_pipe = _watchdog(proc.pid, cleanup)
        try:
            rc = proc.wait(timeout=timeout)
        except BaseException as exc:
            kill_group(proc.pid)
            proc.wait()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise ToolFailed(f"{what} did not finish within {timeout} s; its output is in "
                                 f"{log}", -1, log) from None
            raise
        finally:
            dog.kill()  # it must not act on a finished group (the id could be reused)
            dog.wait()
            os.close(dog_pipe)
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-40:]
        raise ToolFailed(f"{what} failed (exit {rc}); the log is {log}; its last lines:\n"
                         + "\n".join(tail), rc, log)
