"""Image store: content-addressed files, written tmp -> fsync -> rename -> fsync(dir).

The store keeps bytes only; the database index says what they are and where (the key). A key is the day of
receipt plus the SHA-256 of the content, so two different versions of one SOP Instance UID never overwrite
each other, and a day's objects share a directory: one directory fsync per object, not a new directory
tree per object.
"""

from __future__ import annotations

import contextlib
import os
import time
from datetime import date
from pathlib import Path
from typing import BinaryIO, Protocol

TMP_DIR = "tmp"


class ImageStore(Protocol):
    """What the service needs of an image store (FileStore now; an object store when scaled out)."""

    def temp_dir(self) -> Path: ...
    def commit_file(self, tmp_path: Path | str, sha256: str, day: date) -> tuple[str, bool]: ...
    def restore_file(self, tmp_path: Path, key: str) -> None: ...
    def remove(self, key: str) -> None: ...
    def open(self, key: str) -> BinaryIO: ...
    def path(self, key: str) -> Path: ...
    def exists(self, key: str) -> bool: ...
    def ready(self) -> bool: ...


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStore:
    """Objects under ``root/YYYY/MM/DD/<sha256>.dcm``; in-flight files under ``root/tmp/<process>``."""

    def __init__(self, root: Path, temp_name: str = "default") -> None:
        # Each receiver process has its own temp folder, so sweeping it after a crash never touches
        # another process's transfer in flight.
        self.root = root
        self._tmp = root / TMP_DIR / temp_name
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._root_str = str(root)
        self._known_dirs: set[str] = set()

    @staticmethod
    def key_for(sha256: str, day: date) -> str:
        return f"{day.year:04d}/{day.month:02d}/{day.day:02d}/{sha256}.dcm"

    def temp_dir(self) -> Path:
        return self._tmp

    def commit_file(self, tmp_path: Path | str, sha256: str, day: date) -> tuple[str, bool]:
        """Move an fsync'd temp file into place. Returns (key, created); identical content already stored is kept."""
        key = self.key_for(sha256, day)
        # Plain strings: this runs once per received object, and pathlib costs several times more.
        dest = os.path.join(self._root_str, key)
        parent = os.path.dirname(dest)
        if parent not in self._known_dirs:
            self._make_dirs(Path(parent))
            self._known_dirs.add(parent)
        if os.path.exists(dest):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_path)
            return key, False
        os.replace(tmp_path, dest)
        _fsync_dir(parent)
        return key, True

    def restore_file(self, tmp_path: Path, key: str) -> None:
        """Put an fsync'd copy back under an existing key whose file went missing."""
        dest = self.root / key
        self._make_dirs(dest.parent)
        os.replace(tmp_path, dest)
        _fsync_dir(dest.parent)

    def _make_dirs(self, path: Path) -> None:
        # Each directory created is made durable in its parent, top-down.
        if path.is_dir():
            return
        self._make_dirs(path.parent)
        try:
            path.mkdir()
        except FileExistsError:
            return
        _fsync_dir(path.parent)

    def remove(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def open(self, key: str) -> BinaryIO:
        return open(self.root / key, "rb")

    def path(self, key: str) -> Path:
        return self.root / key

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def ready(self) -> bool:
        return self._tmp.is_dir() and os.access(self._tmp, os.W_OK)

    def sweep_temp(self, older_than_seconds: float = 0.0, others_older_than_seconds: float | None = None) -> int:
        """Delete leftovers of writes that never completed (a crash or an aborted association).

        This process's own folder is swept of files older than ``older_than_seconds`` (0: all). With
        ``others_older_than_seconds``, the folders of other processes (a container recreated under another
        hostname, fewer worker processes than before) are swept too, of files untouched for that long: a
        transfer in flight writes at least once per network timeout, so such files are dead. Returns how
        many files were removed.
        """
        count = self._sweep_folder(self._tmp, older_than_seconds)
        if others_older_than_seconds is not None:
            for folder in self._tmp.parent.iterdir():
                if folder != self._tmp and folder.is_dir():
                    count += self._sweep_folder(folder, others_older_than_seconds)
        return count

    @staticmethod
    def _sweep_folder(folder: Path, older_than_seconds: float) -> int:
        cutoff = time.time() - older_than_seconds
        count = 0
        for p in folder.iterdir():
            try:
                if p.is_file() and (older_than_seconds <= 0 or p.stat().st_mtime < cutoff):
                    p.unlink()
                    count += 1
            except FileNotFoundError:
                continue
        return count
