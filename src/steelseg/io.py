"""File helpers every module shares: atomic writes, reading an image, output-folder checks.

The first stop of the data path: it imports nothing of steelseg and neither torch nor pandas, so
any module (and any command before it parses its arguments) may use it.

* **Atomic writes** (:func:`atomic_write`, :func:`atomic_dir`): a reader sees the old file or
  folder or the whole new one, never a part; a failed write leaves nothing behind, and a full
  disk is one :class:`DiskFullError` line naming the file and the space it needs.
* **Locks** (:func:`locked`): one process builds a shared artefact (synthetic data, a prepared
  split and its cache, a tuned sidecar) while the others wait, then reuse it. The locks are
  ``flock`` locks (the ``filelock`` library): the system drops them when their process dies,
  so a killed run never blocks the next one.
* **Images** (:func:`read_grey`, :func:`check_image`): one reading of a file as uint8 grey, with
  the truncated-JPEG check OpenCV lacks (it decodes a cut-off JPEG silently, with grey filler).
* **Outputs** (:func:`check_out_folder`, :func:`write_png`, :func:`json_ready`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

log = logging.getLogger(__name__)

#: Image files steelseg reads (train_images/, prediction inputs); compared lower-case.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"


# ----------------------------------------------------------------------------- atomic writes
def umask() -> int:
    """The process's file-creation mask (``os.umask`` can only be read by setting it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (no-op where directories cannot be opened)."""
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


def _megabytes(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n / 1e3:,.0f} kB"


class DiskFullError(OSError):
    """The disk of ``path`` has no room left; nothing of ``path`` was written.

    Attributes:
        path: The file or folder being written.
        needed: Bytes it needs (at least; 0 when unknown).
        free: Bytes free on its disk when the error was raised.
    """

    def __init__(self, path: Path, needed: int = 0, at_least: bool = True) -> None:
        path = Path(path)
        folder = next((p for p in (path, *path.parents) if p.exists()), Path("."))
        self.path, self.needed = path, int(needed)
        self.free = shutil.disk_usage(folder).free
        need = ""
        if needed:
            need = f"it needs {'more than' if at_least else 'about'} {_megabytes(needed)}, "
        super().__init__(
            errno.ENOSPC,
            f"No space left on device: cannot write {path} ({need}{_megabytes(self.free)} "
            "free there); free some space or write to another disk. Earlier files are intact",
        )

    def __str__(self) -> str:
        return self.strerror


def disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it: torch and numpy wrap OS errors) is a full disk."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def check_space(path: Path, needed: int) -> None:
    """Refuse, before anything is written, a write of ``needed`` bytes that cannot fit.

    Raises:
        DiskFullError: the disk holding ``path`` has less than ``needed`` bytes free.
    """
    path = Path(path)
    folder = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if shutil.disk_usage(folder).free < needed:
        raise DiskFullError(path, needed, at_least=False)


_held: dict[str, tuple[Any, int]] = {}  # lock file -> (FileLock, depth): re-entrant per process
_held_guard = threading.Lock()


@contextlib.contextmanager
def locked(path: Path, what: str) -> Iterator[None]:
    """Hold the lock of the shared artefact at ``path`` (file ``.<name>.lock`` beside it).

    A process that finds it held says what it waits for and waits; the holder builds the
    artefact, the waiters then find it built. Re-entrant within a process.

    Args:
        path: The artefact (a file or folder; it need not exist yet).
        what: Names the artefact in the waiting message, e.g. ``"the prepared split"``.
    """
    from filelock import FileLock, Timeout

    path = Path(path).resolve()
    lock_file = path.parent / f".{path.name}.lock"
    key = str(lock_file)
    with _held_guard:
        if key in _held:
            lock, depth = _held[key]
            _held[key] = (lock, depth + 1)
            reentered = True
        else:
            reentered = False
    if not reentered:
        try:
            lock_file.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):  # a file where a folder must be
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path)) from None
        lock = FileLock(key)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.warning("waiting for %s in %s: another process is building it", what, path)
            lock.acquire()
        with _held_guard:
            _held[key] = (lock, 1)
    try:
        yield
    finally:
        with _held_guard:
            lock, depth = _held[key]
            if depth > 1:
                _held[key] = (lock, depth - 1)
            else:
                del _held[key]
                lock.release()


def remove_stale(folder: Path, name: str) -> list[Path]:
    """Delete what killed writers left of ``name`` in ``folder``: temporary files and folders
    named ``.<name>.*`` (hold the artefact's :func:`locked` first: a live writer's are alike)."""
    folder = Path(folder)
    stale = sorted(folder.glob(f".{name}.*")) if folder.is_dir() else []
    stale = [p for p in stale if not p.name.endswith(".lock")]
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


def file_digest(path: Path) -> str:
    """Short sha256 of a file's bytes (16 hex digits: identifies a train.csv, split or model)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def atomic_write(path: Path, write: Callable[[BinaryIO], object], fsync: bool = False) -> None:
    """Call ``write`` on a temporary file in ``path``'s folder, then rename it over ``path``.

    ``fsync`` also flushes the data, and the rename, to disk (for files whose loss would cost
    hours, e.g. checkpoints).

    Raises:
        DiskFullError: the disk filled up; ``path`` is as it was before.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        written = Path(tmp).stat().st_size if Path(tmp).exists() else 0
        Path(tmp).unlink(missing_ok=True)
        if disk_full(e):
            raise DiskFullError(path, written) from None
        raise
    if fsync:
        fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(path: Path, replace: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``path``; rename it to ``path`` at the end.

    Yields the temporary folder to fill. On an exception it is deleted and ``path`` is
    untouched. ``replace``: an existing ``path`` is swapped out and deleted (else the rename
    fails where ``path`` is a non-empty folder).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700
        old = None
        if replace and path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_full(e) and not isinstance(e, DiskFullError):
            raise DiskFullError(path) from None
        raise


# ----------------------------------------------------------------------------- images
def is_image_file(path: Path) -> bool:
    """Whether ``path`` is a file with one of :data:`IMAGE_SUFFIXES`."""
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def images_in(folder: Path) -> list[Path]:
    """The image files of ``folder`` (not recursive), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if is_image_file(p))


class ImageError(ValueError):
    """An image file that cannot be used: ``cannot read <path>: <reason>``.

    Attributes:
        path: The file.
        reason: What is wrong with it, without the path.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot read {path}: {reason}")
        self.path, self.reason = Path(path), reason


def _truncated(head: bytes, tail: bytes) -> bool:
    """A JPEG (by its start marker) without an end-of-image marker in its last 64 bytes."""
    return head[:2] == JPEG_START and JPEG_END not in tail[-64:]


def truncated_jpeg(data: bytes) -> bool:
    """Whether the bytes of an image file are a JPEG cut short (no end-of-image marker)."""
    return _truncated(data, data)


def read_grey(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 grey (H, W).

    Raises:
        ImageError: (a ``ValueError``) the file is missing, not an image, unreadable, or a
            truncated JPEG; the message starts with ``cannot read <path>:``.
    """
    import cv2

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(path, str(e.strerror or e)) from None
    if truncated_jpeg(data):
        raise ImageError(path, "truncated JPEG (no end-of-image marker)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE) if data else None
    if img is None:
        raise ImageError(path, "not an image, or a damaged one")
    return img


def check_image(path: Path, shape: tuple[int, int] | None = None) -> str | None:
    """Why an image file cannot be used, from its header alone (fast), or None when it can.

    Args:
        path: The image file.
        shape: The (height, width) it must have, or None for any.

    Returns:
        ``missing``, ``unreadable: <error>``, ``truncated JPEG`` or ``size WxH, expected WxH``.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            (w, h), fmt = im.size, im.format
        if shape is not None and (h, w) != tuple(shape):
            return f"size {w}x{h}, expected {shape[1]}x{shape[0]}"
        if fmt == "JPEG":
            with open(path, "rb") as f:
                head = f.read(2)
                f.seek(max(0, os.fstat(f.fileno()).st_size - 64))
                if _truncated(head, f.read()):
                    return "truncated JPEG"
    except FileNotFoundError:
        return "missing"
    except Exception as e:  # PIL raises many types for broken files
        return f"unreadable: {type(e).__name__}"
    return None


def write_png(path: Path, image: np.ndarray) -> None:
    """Save an image (grey or BGR uint8) as PNG, atomically."""
    import cv2

    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"cannot encode {path} as PNG")
    atomic_write_bytes(path, buf.tobytes())


# ----------------------------------------------------------------------------- outputs
def check_out_folder(folder: Path, option: str = "--out") -> None:
    """Refuse an output folder that cannot be made: it, or a folder above it, is a file.

    Raises:
        ValueError: naming the file in the way and the option to change.
    """
    folder = Path(folder)
    for path in (folder, *folder.parents):
        if path.exists():
            if not path.is_dir():
                raise ValueError(
                    f"cannot write {folder}: {path} is a file, not a folder; choose another "
                    f"{option}"
                )
            return


def json_ready(value: Any) -> Any:
    """Replace NaN/inf with None (strict JSON), numpy scalars with Python ones, paths with text."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def run_folder(checkpoint_or_run: str | os.PathLike) -> Path:
    """The training run folder of a checkpoint (``RUN/checkpoints/x.ckpt``), or a run folder.

    A checkpoint outside a ``checkpoints/`` folder belongs to the folder it is in.

    Raises:
        FileNotFoundError: the path does not exist.
    """
    path = Path(checkpoint_or_run)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint or run folder {path} does not exist")
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent
