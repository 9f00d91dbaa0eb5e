"""Atomic writes: the files and folders they leave have the permissions of plainly created ones (os.stat), not
the private 0600 / 0700 of the temporary file or folder they were written as."""

from __future__ import annotations

import os
import stat

import pytest

from mobile_lenet.files import atomic_write_bytes, atomic_write_text, replace_folder, write_text_files


@pytest.fixture(params=[0o022, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomically_written_files_get_the_modes_of_plain_ones(tmp_path, umask):
    plain_file = tmp_path / "plain.txt"
    plain_file.write_text("x")  # open(..., "w"): 0666 less the umask
    (tmp_path / "plain").mkdir()  # 0777 less the umask
    expected_file, expected_folder = mode(plain_file), mode(tmp_path / "plain")
    assert (expected_file, expected_folder) == ((0o644, 0o755) if umask == 0o022 else (0o600, 0o700))

    atomic_write_text(tmp_path / "a.txt", "a")
    atomic_write_bytes(tmp_path / "new" / "b.bin", b"b")
    written = write_text_files({"c.h": "c", "d.c": "d"}, tmp_path / "lib")
    replaced = replace_folder({"e.json": "{}", "sub/f.txt": b"f"}, tmp_path / "export")
    replace_folder({"e.json": "[]", "sub/f.txt": b"g"}, tmp_path / "export")  # replacing an existing folder
    for path in [tmp_path / "a.txt", tmp_path / "new" / "b.bin", *written, *replaced]:
        assert mode(path) == expected_file, path
    for folder in (tmp_path / "export", tmp_path / "export" / "sub"):
        assert mode(folder) == expected_folder, folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "export", "lib", "new", "plain", "plain.txt"]
