"""Writing files: atomically (temporary file in the same folder, fsync, rename), so a reader never sees a
half-written file, and a kill at any moment leaves either the old file or the new one.

Temporary names are ``.NAME.PID.mobile-lenet-XXXXXXXX.tmp`` (files and folders alike; a name no user picks by
chance): a temporary whose process is gone is stale (a ``kill -9`` left it) and the next write into that folder
removes it. Whole folders (exports, the quantized model) are built in such a temporary folder and swapped in
(``replace_folder``): in one atomic exchange where the file system has it (Linux ``renameat2``), else by two
renames with the old folder parked as ``.NAME.PID.mobile-lenet-XXXXXXXX.old``, which the next write into that
folder puts back if a kill left NAME missing. Either way a kill leaves the old folder or the new one.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from mobile_lenet.errors import UserError

class WriteError(UserError, OSError):
    """A file or folder could not be written (full disk, no permission): one line, and still an OSError."""


_TMP_TAG = "mobile-lenet-"
# mkstemp and mkdtemp add 8 characters from [a-z0-9_]
_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.mobile-lenet-[a-z0-9_]{8}\.(?P<kind>tmp|old)$")


def umasked(mode: int) -> int:
    """``mode`` less the process' umask: the permissions a plainly created file or folder would get."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but not ours
        return True
    return True


def clean_stale_tmp(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders that a killed writer left in ``folder``; returns them.

    A parked old folder (``.old``) whose NAME is missing (a kill between the two renames of a swap) is put
    back instead."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TMP_NAME.match(entry.name)
        if match is None or _pid_alive(int(match["pid"])):
            continue
        original = folder / match["name"]
        try:
            if match["kind"] == "old" and not original.exists() and not original.is_symlink():
                os.rename(entry, original)
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            pass
    return removed


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}.{_TMP_TAG}"


def temporary_beside(path: str | os.PathLike) -> Path:
    """A new empty temporary file beside ``path``, under this writer's tagged name (so ``clean_stale_tmp`` removes
    it if a kill leaves it): for output that another program writes (a compiler) before it is renamed to ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp")
    os.close(fd)
    return Path(tmp)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> None:
    """Swap the paths ``a`` and ``b`` in one atomic step (Linux renameat2 with RENAME_EXCHANGE).

    OSError with errno ENOSYS or EINVAL where the C library, kernel or file system has no such exchange."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):
        raise OSError(errno.ENOSYS, "no renameat2") from None
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(b))


def _fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    try:
        fd = os.open(path, (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if directory else os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


NAME_MAX = 255  # bytes in one file or folder name (every common file system)


def check_name(path: str | os.PathLike) -> None:
    """UserError when a part of ``path`` is longer than a file name may be (before any stat of it fails)."""
    too_long = next((part for part in Path(path).parts if len(os.fsencode(part)) > NAME_MAX), None)
    if too_long is not None:
        raise UserError(f"{str(path)[:60]}...: a name longer than the {NAME_MAX} bytes a file name may have")


def check_readable_file(path: str | os.PathLike) -> None:
    """UserError unless ``path`` is a regular file (or a link to one): reading a FIFO, a device or a socket would
    block or never end, so it is refused before it is opened."""
    check_name(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{path}: is a folder, not a file")
    if not stat.S_ISREG(mode):
        raise UserError(f"{path}: not a regular file (a pipe, device or socket); give a file")


def _check_parent(path: Path) -> None:
    """One line, before anything is written, when ``path``'s folder cannot be made or written to, or ``path``
    is a symbolic link to nothing."""
    if path.is_symlink() and not path.exists():
        raise UserError(f"{path}: a symbolic link to a missing {os.readlink(path)}; remove it or choose another name")
    parent = path.parent
    for above in [parent, *parent.parents]:
        if above.exists():
            if not above.is_dir():
                raise UserError(f"{path}: cannot write: {above} is a file, not a folder")
            if not os.access(above, os.W_OK | os.X_OK):
                raise UserError(f"{path}: cannot write: no permission to write in {above}")
            return


def check_writable_file(path: str | os.PathLike) -> None:
    """UserError unless a file could be written at ``path`` (not a folder; its folder can be made and written)."""
    path = Path(path)
    check_name(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a file")
    _check_parent(path)


def check_writable_folder(path: str | os.PathLike) -> None:
    """UserError unless ``path`` is or can become a folder we can write into."""
    path = Path(path)
    check_name(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is not a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{path}: cannot write: no permission")
        return
    _check_parent(path)


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then fsync and rename the result onto ``path``: no half-written file is ever seen.

    The temporary file is in ``path``'s folder (so the rename is atomic) and gets the permissions of a
    plainly created file; stale temporaries of killed writers in that folder are removed first.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"{path}: cannot write ({e.strerror or e})") from None
    clean_stale_tmp(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp")
    except OSError as e:
        raise WriteError(f"{path}: cannot write ({e.strerror or e})") from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, umasked(0o666))  # mkstemp makes it private; the result is an ordinary file
        _fsync_path(tmp)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, UserError):
            raise
        raise WriteError(f"{path}: cannot write ({e.strerror or e})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_path(path.parent, directory=True)


def staging_folder(path: str | os.PathLike) -> Path:
    """A new private temporary folder beside ``path`` (a stale temporary if a kill leaves it), to build several
    files in before they are renamed into place; WriteError if it cannot be made."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(path.parent)
        return Path(tempfile.mkdtemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp"))
    except OSError as e:
        raise WriteError(f"{path}: cannot write ({e.strerror or e})") from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_write``)."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see ``atomic_write``)."""
    atomic_write_bytes(path, text.encode(encoding))


def write_text_files(files: dict[str, str], out_dir: str | os.PathLike) -> list[Path]:
    """Write ``files`` (relative path -> text) into ``out_dir`` (created if needed), each atomically.

    Other files in ``out_dir`` are kept (a build cache); exports use ``replace_folder`` instead."""
    out_dir = Path(out_dir)
    written = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            path = out_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)  # e.g. an export's host/ program
            atomic_write(path, lambda tmp, text=text: Path(tmp).write_text(text, encoding="ascii"))
            written.append(path)
    except OSError as e:
        raise WriteError(f"{out_dir}: cannot write ({e.strerror or e})") from None
    return written


def folder_files(folder: Path) -> set[str]:
    """Relative paths (``/``-separated) of every file under ``folder``."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}


def replace_folder(files: dict[str, str | bytes], out_dir: str | os.PathLike, what: str = "export",
                   replaceable=None) -> list[Path]:
    """Write ``files`` (relative path -> text or bytes) as the whole of ``out_dir``, atomically.

    Everything is written (and fsynced) into a temporary sibling folder first, which then takes
    ``out_dir``'s place by renames: a failure or a kill never leaves a half-written or half-replaced folder.
    An existing ``out_dir`` is replaced whole if it is empty, holds no file that this write would not write,
    or ``replaceable(out_dir)`` says it is a previous ``what``; otherwise it is refused with one line, so no
    unrelated file is lost or mixed in.
    """
    out_dir = Path(out_dir)
    check_writable_folder(out_dir)
    clean_stale_tmp(out_dir.parent)  # first: it may put back an old folder that a kill left parked
    if out_dir.is_dir():
        present = folder_files(out_dir)
        ok = present <= set(files) or (replaceable is not None and replaceable(out_dir))
        if not ok:
            extra = sorted(present - set(files)) or sorted(present)
            raise UserError(f"{out_dir}: not empty and not a previous {what} (holds {extra[0]}"
                            f"{f' and {len(extra) - 1} more' if len(extra) > 1 else ''}); choose a new or empty folder")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=_tmp_prefix(out_dir), suffix=".tmp"))
    except OSError as e:
        raise WriteError(f"{out_dir}: cannot write ({e.strerror or e})") from None
    old = None  # where the old folder is once swapped out (removed at the end)
    try:
        os.chmod(staging, umasked(0o777))  # mkdtemp makes it private; the result is an ordinary folder
        for name, data in files.items():
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
            _fsync_path(path)
        for folder in sorted({(staging / n).parent for n in files}, key=lambda p: -len(p.parts)):
            _fsync_path(folder, directory=True)
        if out_dir.exists():
            old = _swap_in(staging, out_dir)
        else:
            os.rename(staging, out_dir)
        _fsync_path(out_dir.parent, directory=True)
    except BaseException as e:
        if old is None:
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, UserError):
            raise WriteError(f"{out_dir}: cannot write ({e.strerror or e})") from None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return [out_dir / name for name in files]


def _swap_in(staging: Path, out_dir: Path) -> Path:
    """Put the folder ``staging`` in place of the existing ``out_dir``; returns where the old one now is.

    One atomic exchange where the file system has it; else two renames with the old folder parked under a
    stale-looking ``.old`` name in between, so a kill there leaves it for ``clean_stale_tmp`` to put back."""
    try:
        _exchange(staging, out_dir)
        return staging
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
    parked = staging.with_suffix(".old")
    os.rename(out_dir, parked)
    try:
        os.rename(staging, out_dir)
    except BaseException:
        os.rename(parked, out_dir)
        raise
    return parked
