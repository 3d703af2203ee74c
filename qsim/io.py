"""Files the command line reads and writes, handled so that a failure never leaves a mess.

:func:`open_output` is the one way qsim writes an output file the user named:

* a regular file (or a path that does not exist yet) is written to a temporary file in the
  same directory, flushed to disk and renamed over the target (``os.replace``), so readers
  see the old contents or the new, never a truncated file, and a failed write leaves the old
  file as it was. The new file keeps the mode (and, where allowed, the owner) of the file it
  replaces; a new file gets ``0o666`` less the umask, like any file a program creates; a
  file the user may not write is refused, as ``open(path, "w")`` would refuse it;
* a symbolic link is followed: its target is written (atomically if it is a regular file or
  does not exist yet) and the link stays a link;
* a character or block device, a FIFO or another special file is opened and written through
  (``--output /dev/null`` stays the device, a FIFO's reader gets the data); nothing can be
  rolled back there.

:func:`read_text` reads a UTF-8 text file with one-line errors, and :func:`json_text` formats
every ``--json`` output: strict JSON, with NaN and infinities (figures that could not be
measured) written as ``null``.
"""

from __future__ import annotations

import io
import json
import math
import os
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

from qsim.errors import ConfigError

__all__ = ["open_output", "write_output", "check_output", "check_directory", "read_text",
           "json_text", "json_safe"]


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


class _Stream(io.RawIOBase):
    """A device or FIFO opened for writing, as a stream without positions.

    ``/dev/null`` accepts ``seek`` and always answers ``tell() == 0``; writers that measure
    what they wrote by ``tell()`` (zip archives) would then compute nonsense, so every target
    that is not a regular file is presented as unseekable.
    """

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        return os.write(self._fd, data)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if not self.closed:
            try:
                os.close(self._fd)
            finally:
                super().close()


@contextmanager
def reading_archive(label: str, kind: str = ".npz") -> Iterator[None]:
    """Turn any failure to read a numpy file inside the block into one :class:`ConfigError`.

    A :class:`ConfigError` raised in the block passes through; an ``OSError`` becomes
    ``cannot read LABEL: REASON``; anything numpy or zipfile raise (pickled objects, a
    truncated archive) becomes ``cannot read LABEL: not a valid KIND file (FIRST LINE)``.
    ``kind`` may be a one-item list, so that the block can say what it found.
    """
    try:
        yield
    except ConfigError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot read {label}: {exc.strerror or exc}") from None
    except Exception as exc:  # numpy's ValueError/EOFError, zipfile's BadZipFile ...
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        found = kind[0] if isinstance(kind, list) else kind
        raise ConfigError(f"cannot read {label}: not a valid {found} file ({text})") from None


def _target(path: str | os.PathLike) -> tuple[str, os.stat_result | None]:
    """The file a write to ``path`` must change (symbolic links resolved) and its status."""
    real = os.path.realpath(os.fspath(path))
    try:
        return real, os.stat(real)
    except FileNotFoundError:
        return real, None


def check_output(path: str | os.PathLike) -> None:
    """Raise :class:`ConfigError` now if ``path`` can certainly not be written as a file.

    Catches the common mistakes (a directory, a missing parent directory) before a long
    computation; permissions and disk space are only known when writing.
    """
    label = os.fspath(path)
    real, status = _target(path)
    if status is not None and stat.S_ISDIR(status.st_mode):
        raise ConfigError(f"cannot write {label}: Is a directory")
    if status is None:
        directory = os.path.dirname(real) or "."
        if not os.path.isdir(directory):
            raise ConfigError(f"cannot write {label}: No such file or directory "
                              f"({os.path.dirname(label) or '.'})")


def check_directory(path: str | os.PathLike, what: str) -> None:
    """Raise :class:`ConfigError` unless files can be created in directory ``path``.

    ``path`` may not exist yet (it will be created with its parents): then its nearest
    existing ancestor is checked. The check creates and removes one empty file, so that
    read-only file systems and permissions are caught as the real write would meet them.
    """
    label = os.fspath(path)
    probe = Path(os.path.realpath(label))
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"cannot write {what} into {label}: Not a directory")
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"cannot write {what} into {label}: Not a directory ({probe})")
    name = probe / f".qsim-probe-{secrets.token_hex(4)}"
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write {what} into {label}: {_reason(exc)}") from None
    os.close(fd)
    os.unlink(name)


def _temporary(directory: str, base: str, mode: int | None) -> tuple[int, str]:
    """Create a new file next to the target; ``mode`` None means 0o666 less the umask."""
    for _ in range(100):
        name = os.path.join(directory, f".{base}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                         0o666 if mode is None else 0o600)
        except FileExistsError:
            continue
        if mode is not None:
            try:
                os.fchmod(fd, mode)
            except OSError:
                os.close(fd)
                os.unlink(name)
                raise
        return fd, name
    raise FileExistsError(17, "could not create a temporary file")  # pragma: no cover


def _keep_owner(fd: int, status: os.stat_result) -> None:
    if (status.st_uid, status.st_gid) != (os.geteuid(), os.getegid()):
        try:
            os.fchown(fd, status.st_uid, status.st_gid)
        except OSError:
            pass  # only root may give a file away; the new file is then the writer's


def _sync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def open_output(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """A file object for writing ``path`` safely (see the module documentation).

    ``mode`` is ``"wb"`` or ``"w"`` (UTF-8 text). The file takes its new contents when the
    ``with`` block ends without an exception; on an exception a regular file keeps its old
    contents and no temporary file is left. Operating-system errors become
    :class:`ConfigError` (``cannot write PATH: reason``).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', not {mode!r}")
    label = os.fspath(path)
    check_output(path)
    real, status = _target(path)

    def wrap(fd: int) -> IO[Any]:
        return os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8"}))

    if status is not None and not stat.S_ISREG(status.st_mode):
        # a device, a FIFO, a socket ...: write through, never replace it by a regular file
        try:
            stream = io.BufferedWriter(_Stream(os.open(real, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))))
            handle = stream if mode == "wb" else io.TextIOWrapper(stream, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write {label}: {_reason(exc)}") from None
        try:
            with handle:
                yield handle
        except OSError as exc:
            raise ConfigError(f"cannot write {label}: {_reason(exc)}") from None
        return

    if status is not None and not os.access(real, os.W_OK):
        # renaming over a file one may not write would bypass its permissions
        raise ConfigError(f"cannot write {label}: Permission denied")
    directory = os.path.dirname(real) or "."
    try:
        fd, tmp = _temporary(directory, os.path.basename(real),
                             None if status is None else stat.S_IMODE(status.st_mode))
    except OSError as exc:
        raise ConfigError(f"cannot write {label}: {_reason(exc)}") from None
    try:
        if status is not None:
            _keep_owner(fd, status)
        with wrap(fd) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, real)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise ConfigError(f"cannot write {label}: {_reason(exc)}") from None
        raise
    _sync_directory(directory)


def write_output(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` (bytes, or str as UTF-8) to ``path`` with :func:`open_output`."""
    with open_output(path, "wb") as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)


def read_text(path: str | os.PathLike, what: str = "") -> str:
    """The contents of a UTF-8 text file, or :class:`ConfigError` with one line.

    Messages: ``cannot read WHATPATH: reason`` (``what`` is a prefix such as ``"scenario "``)
    and ``cannot read WHATPATH: not UTF-8 text (byte 0xff at offset 12)``.
    """
    label = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what}{label}: {_reason(exc)}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read {what}{label}: not UTF-8 text (byte 0x{data[exc.start]:02x} "
                          f"at offset {exc.start})") from None


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None, numpy scalars and arrays as Python."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_text(value: Any) -> str:
    """Strict JSON of ``value`` (never ``NaN`` or ``Infinity``), indented as every --json output."""
    return json.dumps(json_safe(value), indent=1, allow_nan=False)
