"""The CLI's output and file-system errors as one line: a stdout that fails to write, and the OS errors a user's names
or disk cause wherever they are met (a file name too long, a full disk)."""

from __future__ import annotations

import errno
import os

from mobile_lenet.errors import UserError

# Errors of the file system that a user's names or disk cause wherever they are met: one line, not a traceback.
USER_OS_ERRORS = {errno.ENAMETOOLONG: "a file name too long", errno.ENOSPC: "no space left on the disk",
                  errno.EDQUOT: "disk quota exceeded", errno.EROFS: "a read-only file system"}


class GuardedOutput:
    """``sys.stdout`` while a verb runs: a write that fails (a full disk, ``>/dev/full``) is a UserError, and the
    stream is silenced so the interpreter's flush at exit adds no second message."""

    def __init__(self, stream):
        self._stream = stream

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def write(self, text: str) -> int:
        return self._guarded(self._stream.write, text)

    def flush(self) -> None:
        return self._guarded(self._stream.flush)

    def _guarded(self, call, *args):
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as e:
            silence(self._stream)
            raise UserError(f"cannot write the output ({e.strerror or e})") from None


def silence(stream) -> None:
    """Point ``stream``'s file descriptor at /dev/null (where what it still holds can be flushed harmlessly)."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):  # no real descriptor (a test's capture)
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)
