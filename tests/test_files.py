"""files.py: atomic writes and folder swaps leave the old output or the new one, whatever kills them, and never
touch a file that is not their own."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mobile_lenet import files

# A writer killed with SIGKILL right after its KILL_AT-th rename (os.rename or the atomic exchange).
KILLED_WRITER = r"""
import errno, os, signal, sys
from mobile_lenet import files

out, kill_at, exchange = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "exchange"
calls = 0

def killing(rename):
    def wrapper(*args):
        global calls
        rename(*args)
        calls += 1
        if calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    return wrapper

def no_exchange(a, b):
    raise OSError(errno.EINVAL, "not on this file system")

files._exchange = killing(files._exchange) if exchange else no_exchange
files.os.rename = killing(os.rename)
files.replace_folder({"a.txt": "new a", "sub/b.txt": "new b"}, out, what="test export")
print(calls)
"""

OLD = {"a.txt": "old a", "sub/b.txt": "old b"}
NEW = {"a.txt": "new a", "sub/b.txt": "new b"}


def contents(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in folder.rglob("*") if p.is_file()}


def run_writer(out: Path, kill_at: int, mode: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out), str(kill_at), mode], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("mode", ["exchange", "two-renames"])
def test_a_kill_at_any_rename_of_a_folder_swap_keeps_the_old_or_the_new_folder(tmp_path, mode):
    """Killed after each rename of the swap: the folder is there, whole (old or new), at once or after the next
    write into its parent folder; and no temporary is left once that write is done."""
    if mode == "exchange":
        try:
            (tmp_path / "x").mkdir()
            (tmp_path / "y").mkdir()
            files._exchange(tmp_path / "x", tmp_path / "y")
        except OSError as e:
            pytest.skip(f"no atomic exchange here ({e})")
    files.replace_folder(OLD, tmp_path / "probe", what="test export")
    whole = run_writer(tmp_path / "probe", 0, mode)  # how many renames an unkilled swap makes
    assert whole.returncode == 0, whole.stderr
    renames = int(whole.stdout)
    assert renames == (1 if mode == "exchange" else 2)
    for kill_at in range(1, renames + 1):
        case = tmp_path / f"kill{kill_at}"
        files.replace_folder(OLD, case / "out", what="test export")
        result = run_writer(case / "out", kill_at, mode)
        assert result.returncode == -9, result.stderr
        if mode == "exchange":  # nothing to put back: the exchange is one step
            assert contents(case / "out") in (OLD, NEW)
        # the next write into the folder (here one that is refused) cleans up and puts a parked folder back
        (case / "out2").mkdir()
        (case / "out2" / "mine.txt").write_text("keep")
        with pytest.raises(files.UserError, match="not a previous test export"):
            files.replace_folder(NEW, case / "out2", what="test export")
        assert contents(case / "out") in (OLD, NEW), kill_at
        assert sorted(p.name for p in case.iterdir()) == ["out", "out2"]


def test_an_old_folder_parked_by_a_killed_swap_is_not_lost_to_the_next_export(tmp_path, monkeypatch):
    """Killed between the two renames: the next export into the same place puts the old folder back first, so
    when that export fails (a full disk) the old folder is still there."""
    out = tmp_path / "out"
    files.replace_folder(OLD, out, what="test export")
    result = run_writer(out, 1, "two-renames")
    assert result.returncode == -9 and not out.exists()

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(files.WriteError, match="No space left"):
        files.replace_folder(NEW, out, what="test export")
    monkeypatch.undo()
    assert contents(out) == OLD and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_files_that_only_look_like_temporaries_are_kept(tmp_path):
    """A user's ``.notes.40000.keep.tmp`` (dead pid, old-style name) survives every writer's clean-up."""
    mine = [tmp_path / ".notes.40000.keep.tmp", tmp_path / ".notes.40000.abcdefgh.tmp",
            tmp_path / ".x.40000.mobile-lenet-abc.tmp"]
    for path in mine:
        path.write_text("mine")
    (tmp_path / ".dir.40000.keep.tmp").mkdir()
    files.atomic_write_text(tmp_path / "a.txt", "a")
    files.replace_folder(NEW, tmp_path / "out")
    assert all(p.read_text() == "mine" for p in mine) and (tmp_path / ".dir.40000.keep.tmp").is_dir()


def test_stale_temporaries_of_this_writer_are_removed(tmp_path):
    """What a killed writer leaves (its own tagged names, its pid gone) is removed by the next write."""
    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    stale_file = tmp_path / f".a.txt.{dead}.mobile-lenet-abcd1234.tmp"
    stale_dir = tmp_path / f".out.{dead}.mobile-lenet-abcd1234.tmp"
    stale_file.write_text("half")
    stale_dir.mkdir()
    files.atomic_write_text(tmp_path / "a.txt", "a")
    assert not stale_file.exists() and not stale_dir.exists()


def test_a_dangling_symlink_or_an_overlong_name_is_refused_before_writing(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "missing" / "x")
    for check in (files.check_writable_file, files.check_writable_folder):
        with pytest.raises(files.UserError, match="symbolic link to a missing"):
            check(tmp_path / "link")
        with pytest.raises(files.UserError, match="longer than the 255 bytes"):
            check(tmp_path / ("n" * 300))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link"]


def test_a_write_error_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """A full disk while the folder is written: WriteError (a UserError), no temporary left, old folder kept."""
    files.replace_folder(OLD, tmp_path / "out")

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(files.WriteError, match="No space left on device"):
        files.replace_folder(NEW, tmp_path / "out")
    monkeypatch.undo()
    assert contents(tmp_path / "out") == OLD and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
