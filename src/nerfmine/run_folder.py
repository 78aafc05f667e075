"""A run folder's files: one writer at a time, and every file written whole or not at all.

- :class:`RunLock` is an advisory lock on ``<run>/.lock`` (``fcntl.flock``; ``msvcrt.locking``
  on Windows) that a training run holds while it writes. A second process given the same
  folder stops with a message naming the first one's pid instead of mixing its files with
  it. The operating system releases the lock when its holder dies, even by SIGKILL, so a
  killed run can always be resumed.
- :func:`atomic_write` writes through a temporary ``<name>.<random>.tmp`` in the same folder,
  flushed to disk and renamed over the old file (``os.replace`` is atomic on POSIX and
  Windows): a reader sees the old version or the new one, never a half-written file. A write
  that fails (a full disk, a read-only folder) removes its temporary file and raises
  :class:`~nerfmine.errors.OutputError`, which names the file and the cause and says that the
  previous version is intact.
- :func:`remove_stale_temporaries` deletes the temporary files of writes that a killed process
  left behind (called with the lock held, so no live writer owns them).
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from nerfmine.errors import OutputError

LOCK_NAME = ".lock"
TMP_SUFFIX = ".tmp"


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file (0o666 less the umask):
    ``tempfile.mkstemp`` creates its files 0o600, which would make every rewritten run file
    private to its owner."""
    umask = os.umask(0)  # read at import, before any thread could create files
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()

_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def write_failure(path: Path, exc: BaseException) -> OutputError:
    """An :class:`OutputError` that says why ``path`` could not be written: the errno's
    meaning when there is one, else the free space left (torch's zip writer reports a full
    disk only as "file write failed"), else the original message."""
    path = Path(path)
    cause = None
    if isinstance(exc, OSError) and exc.errno in _CAUSES:
        cause = _CAUSES[exc.errno]
    if cause is None:
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            free = None
        if free is not None and free < 16 * 2**20:
            cause = f"the disk is full ({free / 2**20:.1f} MiB free)"
    if cause is None:
        cause = f"{type(exc).__name__}: {exc}"
    hint = ("free some space (or choose another --output) and run the command again"
            if "full" in cause or "quota" in cause else
            "choose a writable folder with --output" if "read-only" in cause or
            "permission" in cause else "check the folder and run the command again")
    return OutputError(f"could not write {path}: {cause}. The previous version of the file, if "
                       f"any, is intact; {hint}.")


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` whole or not at all: ``write(handle)`` fills a temporary file of the same
    folder, which is flushed to disk and renamed over ``path``. Raises :class:`OutputError`
    (the temporary file removed, the old ``path`` untouched) when the write fails."""
    path = Path(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=TMP_SUFFIX,
                                        dir=path.parent)
    except OSError as exc:
        raise write_failure(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if hasattr(os, "fchmod"):  # POSIX
                os.fchmod(handle.fileno(), _FILE_MODE)
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(exc, (OSError, RuntimeError)):  # torch.save's writer raises RuntimeError
            raise write_failure(path, exc) from exc
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """:func:`atomic_write` of ``data``."""
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_image(path: Path, image, format: str | None = None) -> None:
    """:func:`atomic_write` of a Pillow image (the format from the file name by default)."""
    fmt = format or Path(path).suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG"

    def write(handle: IO[bytes]) -> None:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        handle.write(buffer.getbuffer())

    atomic_write(path, write)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the ``<name>.<random>.tmp`` files that killed writes left in ``folder`` and its
    subfolders (renders are written into ``renders/<split>/``); returns them. Call it holding
    the folder's :class:`RunLock`."""
    removed = []
    for tmp in Path(folder).rglob(f"*{TMP_SUFFIX}"):
        stem = tmp.name[: -len(TMP_SUFFIX)]
        if tmp.is_file() and "." in stem:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


class RunLock:
    """The exclusive lock of a run folder, held from :meth:`acquire` until :meth:`release` (or
    the process's end). ``RunLock(folder).acquire()`` raises :class:`OutputError` naming the
    holder when another process has it; acquiring twice in one process is refused too."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._handle: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self) -> RunLock:
        if self._handle is not None:
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held open
        except OSError as exc:
            raise write_failure(self.path, exc) from exc
        if not _try_lock(handle):
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise OutputError(
                f"{self.folder} is in use by {holder}: two runs cannot write one folder. Wait "
                "for it to finish (or stop it), or choose another --output.")
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        try:
            handle.seek(0)
            handle.truncate()
        except OSError:
            pass
        _unlock(handle)
        handle.close()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass


try:
    import fcntl

    def _try_lock(handle: IO[str]) -> bool:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise write_failure(Path(handle.name), exc) from exc
        return True

    def _unlock(handle: IO[str]) -> None:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        except OSError:
            pass

except ImportError:  # Windows
    import msvcrt

    def _try_lock(handle: IO[str]) -> bool:
        try:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(handle: IO[str]) -> None:
        try:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        except OSError:
            pass
