"""Safe writes: atomic files and folders, an exclusive lock per output, and the one-line error
for a write the operating system refused (full disk, read-only place, a file in the way).

Every file sparseadapter writes for a user goes through here, so nothing half-written ever
replaces something whole, and two processes never write one output at a time.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from sparseadapter.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; outputs are not guarded against a second process
    fcntl = None  # type: ignore[assignment]

LOCK_SUFFIX = ".lock"


def write_error(path: Path | str, err: OSError) -> ConfigError:
    """The one-line error for an OSError while writing ``path``, naming the cause and the fix."""
    reason = err.strerror or str(err)
    fixes = {
        errno.ENOSPC: "free some disk space, or choose another output on a disk with room",
        errno.EDQUOT: "free some disk space, or choose another output on a disk with room",
        errno.EROFS: "choose an output on a writable disk",
        errno.EACCES: "choose an output in a folder you may write to",
        errno.EPERM: "choose an output in a folder you may write to",
        errno.ENOTDIR: "a file stands where a folder is needed: choose another output path",
        errno.EEXIST: "a file stands where a folder is needed: choose another output path",
    }
    fix = fixes.get(err.errno, "check the path and choose another output if needed")
    return ConfigError(f"cannot write {path}: {reason}; {fix}")


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Atomically replace the file ``path`` with what ``write`` writes to a temporary file next
    to it; on any failure the old file is untouched and the temporary file removed. An OSError
    (a full disk, a read-only place) becomes a one-line ConfigError."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        tmp.chmod(0o666 & ~_umask())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise write_error(path, err) from None
        raise


def write_bytes(path: Path, data: bytes) -> None:
    """:func:`write_file` of ``data``."""
    write_file(path, lambda f: f.write(data))


def write_new(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file inside a temporary folder (see :func:`replace_directory`),
    flushed to disk before the folder is renamed into place."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def move_into_place(new: Path, path: Path) -> None:
    """Rename folder ``new`` to ``path``. An existing ``path`` is first moved aside under a
    unique hidden name (never a name that may hold something else), put back if the rename
    fails, and removed once ``new`` is in place."""
    if not path.exists():
        os.replace(new, path)
        return
    old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old)


def check_parent(path: Path) -> None:
    """ConfigError unless ``path`` could be created: every existing ancestor is a folder."""
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"cannot write {path}: {existing} is a file, not a folder; choose another output path"
        )


def replace_directory(path: Path, write: Callable[[Path], None]) -> Path:
    """Let ``write`` fill a temporary folder next to ``path``, then rename it into place
    (replacing ``path``; the caller decides whether it may). On any failure ``path`` is left
    as it was and the temporary folder removed; an OSError becomes a one-line ConfigError."""
    check_parent(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as err:
        raise write_error(path, err) from None
    try:
        write(tmp)
        _public(tmp)
        move_into_place(tmp, path)
    except OSError as err:
        raise write_error(path, err) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _public(folder: Path) -> None:
    """Give ``folder`` and everything in it the modes a new file gets under the umask: mkdtemp
    and some writers (safetensors) create them private to their writer (0700 / 0600)."""
    mask = _umask()
    folder.chmod(0o777 & ~mask)
    for item in folder.rglob("*"):
        item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)


def lock_path(output: Path) -> Path:
    """The lock file guarding ``output``: a hidden file beside it."""
    return output.with_name(f".{output.name}{LOCK_SUFFIX}")


@contextlib.contextmanager
def exclusive(output: Path, what: str = "run", wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``output`` for the block, or raise ConfigError at once if
    another process holds it (``wait=True``: wait for it instead). The lock is the OS's (``flock``): it is released when the process
    ends, however it ends, so a killed run never leaves a stale lock. The lock file is removed
    on release; a process that locked a file another one removed meanwhile tries again."""
    if fcntl is None:
        yield
        return
    path = lock_path(output)
    check_parent(path)
    created = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(path.parent, err) from None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise write_error(path, err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"another sparseadapter process is writing {output} (it holds {path}); wait for "
                f"it to finish, or choose another output for this {what}"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file while we waited for it: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)
        for folder in created:  # innermost first: folders made for the lock that stayed empty
            with contextlib.suppress(OSError):
                folder.rmdir()
