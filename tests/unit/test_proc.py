"""``tessera.proc.run_logged``: a tool's whole process group dies with us, however we die."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tessera.proc import ToolFailed, run_logged

SLEEP = "import time; time.sleep(300)"


def _alive_with_tag(tag: str) -> list[int]:
    """Pids of the live sleepers of :func:`_tree_command` marked with ``tag``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
            state = (d / "stat").read_text().split(") ")[-1][:1]
        except OSError:
            continue
        if argv[1:4] == [b"-c", SLEEP.encode(), tag.encode()] and state != "Z":
            out.append(int(d.name))
    return out


def _wait_until(cond, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def _tree_command(tag: str) -> list[str]:
    # a shell whose children (like make's compilers) are grandchildren of the caller; ``tag``
    # is an ignored argument that marks them in the process table
    sleeper = f"{sys.executable} -c '{SLEEP}' {tag}"
    return ["/bin/sh", "-c", f"{sleeper} & {sleeper} & wait"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_the_group_and_cleanup_dirs_go_when_the_caller_dies(tmp_path, sig) -> None:
    tag = f"tessera-proc-test-{sig.name}-{os.getpid()}"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "partial.o").write_bytes(b"x" * 1000)
    # Ctrl-C at a terminal: Python's KeyboardInterrupt handler. A suite started in the background
    # by a non-interactive shell inherits SIGINT as *ignored*, and Python then installs none.
    child = textwrap.dedent(f"""
        import signal
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from pathlib import Path
        from tessera.proc import run_logged
        run_logged({_tree_command(tag)!r}, cwd=Path({str(tmp_path)!r}), env=None,
                   log=Path({str(tmp_path / "log")!r}), what="test tree",
                   cleanup=[Path({str(scratch)!r})])
    """)
    proc = subprocess.Popen([sys.executable, "-c", child])
    try:
        assert _wait_until(lambda: len(_alive_with_tag(tag)) == 2, 30), "the tree did not start"
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:  # a failed case must not leave the child (its watchdog then kills the tree)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _wait_until(lambda: not _alive_with_tag(tag), 10), _alive_with_tag(tag)
    if sig == signal.SIGKILL:  # no Python cleanup ran: the watchdog removed the directory
        assert _wait_until(lambda: not scratch.exists(), 10)


def test_timeout_and_failure_name_the_log(tmp_path) -> None:
    tag = f"tessera-proc-timeout-{os.getpid()}"
    log = tmp_path / "t.log"
    t0 = time.monotonic()
    with pytest.raises(ToolFailed, match=r"did not finish within 0.5 s; its output is in .*t\.log"):
        run_logged(_tree_command(tag), cwd=tmp_path, env=None, log=log, what="tree",
                   timeout=0.5)
    assert time.monotonic() - t0 < 10
    assert _wait_until(lambda: not _alive_with_tag(tag), 10)
    with pytest.raises(ToolFailed, match=r"false step failed \(exit 1\); the log is .*t\.log") \
            as info:
        run_logged(["false"], cwd=tmp_path, env=None, log=log, what="false step")
    assert info.value.returncode == 1 and info.value.log == log and log.exists()
    with pytest.raises(ToolFailed, match="cannot run"):
        run_logged([str(tmp_path / "no-such-tool")], cwd=tmp_path, env=None, log=log,
                   what="missing")
