"""Atomic file writes: a reader (or a crash) never sees a half-written file."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_bytes", "atomic_folder", "replace_folder", "read_limited",
           "FileReadError", "MissingFileError", "printable_name"]


class FileReadError(OSError):
    """A file that must not or cannot be read; the message is one line naming it and the reason."""


class MissingFileError(FileReadError, FileNotFoundError):
    """The file does not exist."""


def read_limited(path: str | os.PathLike, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``max_bytes``.

    Anything else is refused before reading: a FIFO or socket (would block), a device such as
    /dev/zero or /dev/urandom (reads forever), a directory, or a file over the limit.  Symbolic
    links are followed, but what they point to must be a regular file too.  The file is opened
    non-blocking, so even opening a FIFO cannot hang, and at most one byte more than its size is
    read (a file that grows while being read is refused, not read without end).
    """
    name = printable_name(str(path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise MissingFileError(f"{name}: no such {what}") from None
    except OSError as exc:
        raise FileReadError(f"{name}: cannot open {what} ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise FileReadError(f"{name}: is a directory, not a {what}")
        if not stat.S_ISREG(info.st_mode):
            raise FileReadError(f"{name}: not a regular file (a device, FIFO or socket); refusing to read it")
        if info.st_size > max_bytes:
            raise FileReadError(f"{name}: {what} is {info.st_size:,} bytes, over the {max_bytes:,}-byte limit")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(info.st_size + 1)  # never a buffer larger than the file said it was
    if len(data) > info.st_size:
        raise FileReadError(f"{name}: {what} grew while being read; refusing it")
    return data


def printable_name(name: str) -> str:
    """``name`` with control characters (newline, tab, escape, …) escaped, for one-line output."""
    if name.isprintable():
        return name
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it into place.

    The rename is atomic on POSIX, so ``path`` holds either the old or the new content, even
    after a ``kill -9`` at any moment.  On error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder beside ``folder`` to fill; when the block ends, swap it in as
    ``folder`` (:func:`replace_folder`), or remove it if the block raised: ``folder`` is only ever
    the old one or the complete new one."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    tmp.chmod(0o755)  # mkdtemp makes it private; model folders and exports are meant to be shared and shipped
    try:
        yield tmp
        replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_folder(tmp: str | os.PathLike, folder: str | os.PathLike) -> None:
    """Swap the finished folder ``tmp`` in as ``folder``.

    Its files are fsynced, an existing ``folder`` is renamed to ``folder.old``, ``tmp`` is
    renamed into place and the old one removed.  A crash between the two renames leaves the
    complete ``folder.old``, which readers fall back to.
    """
    tmp, folder = Path(tmp), Path(folder)
    for f in tmp.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    old = folder.with_name(folder.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
