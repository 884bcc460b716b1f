"""The ``file`` sink's file: whole JSON lines appended, fsynced, rotated by size. Blocking; the
sink calls it from a worker thread, one call at a time.

Every record goes to the file with one ``os.write`` of the complete line on an ``O_APPEND``
descriptor, so a kill at any moment leaves whole lines only. A short write (a disk filling up
mid-line) is cut back off the file. A file found not ending in a newline (a crash of an older
writer, or of something else) gets one before the next record, which therefore starts a line of
its own.

(Linux can cut a ``write`` that spans several pages when SIGKILL arrives between two of them: a
window of microseconds that the kill tests have not hit; a line cut that way is then ended by the
newline above, and the next record starts a line of its own.)
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MODE = 0o640
"""A new file's mode (before the umask); an existing file's mode is left alone."""
FOLDER_MODE = 0o750
"""A folder the sink has to create (before the umask)."""


@dataclass
class Outcome:
    """What one ``JsonLinesFile.write`` did."""

    written: int
    """Lines written (the first ones of the batch), and fsynced when asked."""
    error: OSError | None = None
    """Why the rest was not written; None: all of it was."""


class JsonLinesFile:
    """A JSON-lines file that only grows by whole lines, rotated when it would pass
    ``max_bytes`` (0: never) into ``path.1`` ... ``path.<backups>``, the oldest dropped.
    """

    def __init__(self, path: Path, *, fsync: bool, max_bytes: int, backups: int) -> None:
        self.path = path
        self.fsync = fsync
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd: int | None = None
        self._regular = False  # a regular file: sized, rotated and fsynced (not a FIFO, a tty)
        self._needs_newline = False  # the file's last line is unfinished (not ours)

    def write(self, lines: Sequence[bytes]) -> Outcome:
        """Append ``lines`` (each one complete, ending in ``\\n``), opening the file first
        (again, if it was moved or removed) and rotating it as it fills. An empty batch only
        opens the file.
        """
        written = 0
        try:
            self._reopen_if_moved()
            if self._fd is None:
                self._open()
            for line in lines:
                self._append(line)
                written += 1
            if written and self.fsync:
                self._sync()
        except OSError as exc:
            self.close()  # the next call starts over: reopens, checks the last line again
            return Outcome(written, exc)
        return Outcome(written)

    def close(self) -> None:
        """Close the file (a later ``write`` opens it again)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    # ------------------------------------------------------------------ inside

    def _open(self) -> None:
        folder = self.path.parent
        if not folder.is_dir():
            if folder.exists():  # a plain file where the folder should be
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
            os.makedirs(folder, mode=FOLDER_MODE, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        fd = os.open(self.path, flags, MODE)
        try:
            info = os.fstat(fd)
            self._regular = stat.S_ISREG(info.st_mode)
            self._needs_newline = self._regular and info.st_size > 0 and not self._ends_line()
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def _ends_line(self) -> bool:
        """The file ends in a newline (or cannot be read back: then trust it does)."""
        try:
            with open(self.path, "rb") as file:
                file.seek(-1, os.SEEK_END)
                return file.read(1) == b"\n"
        except OSError:
            return True

    def _reopen_if_moved(self) -> None:
        """Close the file if ``path`` no longer names it (moved by logrotate, removed, its
        folder replaced): the next record goes where the config says."""
        if self._fd is None:
            return
        try:
            named = os.stat(self.path)
        except OSError:
            self.close()
            return
        held = os.fstat(self._fd)
        if (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
            self.close()

    def _append(self, record: bytes) -> None:
        assert self._fd is not None
        size = os.fstat(self._fd).st_size if self._regular else 0
        if self._needs_newline and size + 1 + len(record) > self.max_bytes > 0:
            self._rotate()  # the unfinished line goes with the full file
            size = 0
        elif size and size + len(record) > self.max_bytes > 0:  # a record bigger than
            self._rotate()  # max_bytes still goes whole, into a file of its own
            size = 0
        line = b"\n" + record if self._needs_newline else record
        done = os.write(self._fd, line)  # the whole record at once: never half a line
        if done != len(line):
            if self._regular:  # take the half line back off, so every line parses
                os.ftruncate(self._fd, size)
            raise OSError(errno.ENOSPC, f"short write ({done} of {len(line)} bytes)")
        self._needs_newline = False

    def _rotate(self) -> None:
        """path.<backups-1> → path.<backups> (dropping the oldest) ... path → path.1; then a
        new file. With no backups the full file is dropped."""
        assert self._fd is not None
        if self.fsync:
            os.fsync(self._fd)
        self.close()
        name = str(self.path)
        if self.backups == 0:
            os.unlink(name)
        else:
            for n in range(self.backups - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{name}.{n}", f"{name}.{n + 1}")
            os.replace(name, f"{name}.1")
        if self.fsync:
            self._sync_folder()
        self._open()

    def _sync(self) -> None:
        assert self._fd is not None
        if self._regular:
            os.fsync(self._fd)

    def _sync_folder(self) -> None:
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def folder_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a file the sink creates or appends to, as far as can be told now
    without creating anything; None when it looks fine."""
    if path.is_dir():
        return f"{path} is a folder, not a file"
    if path.exists():
        return None if os.access(path, os.W_OK) else f"{path} is not writable"
    folder = path.parent
    while not folder.exists():  # the first folder that exists: the rest is created under it
        if folder.is_symlink():
            return f"{folder} is a broken symbolic link"
        folder = folder.parent
    if not folder.is_dir():
        return f"cannot create the folder of {path}: {folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot create {path}: {folder} is not writable"
    return None
