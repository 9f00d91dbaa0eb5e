"""Writing files: atomically (temporary file + rename), so a reader never sees a half-written file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mobile_lenet.errors import UserError


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then rename the result onto ``path``, so no half-written file is ever seen."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_files(files: dict[str, str], out_dir: str | os.PathLike) -> list[Path]:
    """Write ``files`` (relative path -> text) into ``out_dir`` (created if needed), each atomically."""
    out_dir = Path(out_dir)
    written = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            path = out_dir / name
            atomic_write(path, lambda tmp, text=text: Path(tmp).write_text(text, encoding="ascii"))
            written.append(path)
    except OSError as e:
        raise UserError(f"{out_dir}: cannot write ({e.strerror or e})") from None
    return written
