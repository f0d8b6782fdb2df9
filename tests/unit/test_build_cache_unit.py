"""``cached_build_dir`` with a stand-in build function (no compiler): atomic entries verified by
their manifest, damaged entries rebuilt with a warning, interrupted and failed builds cleaned up
with the failure's log kept."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tessera.errors import HwError
from tessera.sim.verilator_build import BuildCacheWarning, cached_build_dir, entry_damage


class FakeBuild:
    """Writes two files; counts its calls; can be told to fail or be interrupted."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail: BaseException | None = None

    def __call__(self, out: Path) -> None:
        self.calls += 1
        (out / "lib.so").write_bytes(bytes(range(256)) * 64)
        (out / "build.log").write_text("compiling\n")
        (out / "sub").mkdir()
        (out / "sub" / "x.txt").write_text("x")
        if self.fail is not None:
            if isinstance(self.fail, HwError):
                raise HwError(f"compiling failed; the log is {out / 'build.log'}")
            raise self.fail


def _entry(tmp_path: Path, build: FakeBuild) -> Path:
    return cached_build_dir("fake", {"design": 1}, build, cache=tmp_path)


def test_entry_is_built_once_and_verified(tmp_path) -> None:
    build = FakeBuild()
    entry = _entry(tmp_path, build)
    assert build.calls == 1 and (entry / "lib.so").exists()
    manifest = json.loads((entry / "manifest.json").read_text())
    assert set(manifest["files"]) == {"lib.so", "build.log", "sub/x.txt"}
    assert manifest["files"]["lib.so"]["size"] == 256 * 64
    assert _entry(tmp_path, build) == entry and build.calls == 1
    assert entry_damage(entry) is None
    assert not list(tmp_path.glob("*.tmp*"))


@pytest.mark.parametrize("damage, why", [
    (lambda e: (e / "lib.so").write_bytes(b"short"), r"lib.so has 5 bytes, not the 16384"),
    (lambda e: (e / "lib.so").write_bytes(bytes(256 * 64)), r"lib.so does not match the sha256"),
    (lambda e: (e / "sub" / "x.txt").unlink(), r"sub/x.txt is missing"),
    (lambda e: (e / "manifest.json").unlink(), r"it has no manifest"),
    (lambda e: (e / "manifest.json").write_text("{"), r"its manifest is unreadable"),
])
def test_damaged_entry_is_rebuilt_with_a_warning(tmp_path, damage, why) -> None:
    build = FakeBuild()
    entry = _entry(tmp_path, build)
    damage(entry)
    with pytest.warns(BuildCacheWarning, match=rf"{re.escape(str(entry))} is damaged: {why}"):
        again = _entry(tmp_path, build)
    assert again == entry and build.calls == 2 and entry_damage(entry) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [entry.name, entry.name + ".lock"]


def test_interrupted_build_leaves_nothing(tmp_path) -> None:
    build = FakeBuild()
    build.fail = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        _entry(tmp_path, build)
    assert [p.name for p in tmp_path.iterdir()] == [p.name for p in tmp_path.glob("*.lock")]
    build.fail = None
    assert (_entry(tmp_path, build) / "lib.so").exists()


def test_failed_build_keeps_its_log(tmp_path) -> None:
    build = FakeBuild()
    build.fail = HwError("x")
    with pytest.raises(HwError, match=r"the log is (\S+\.failed\.log); the build log is kept") \
            as info:
        _entry(tmp_path, build)
    log = Path(re.search(r"the log is (\S+\.failed\.log);", str(info.value)).group(1))
    assert log.read_text() == "compiling\n"
    assert not list(tmp_path.glob("*.tmp*"))
    build.fail = None
    _entry(tmp_path, build)
    assert not log.exists()  # a later good build removes the stale failure log


def test_stale_temp_dir_of_a_killed_builder_is_removed(tmp_path) -> None:
    build = FakeBuild()
    entry = _entry(tmp_path, build)
    (entry / "manifest.json").unlink()  # force a rebuild under the lock
    stale = tmp_path / f"{entry.name}.tmp999999"
    stale.mkdir()
    (stale / "junk.o").write_bytes(b"0" * 100)
    with pytest.warns(BuildCacheWarning):
        _entry(tmp_path, build)
    assert not stale.exists()
