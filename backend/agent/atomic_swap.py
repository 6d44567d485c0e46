"""Crash-safe replacement of a directory: build next to it, then swap the two atomically.

`swap_directory` exchanges the new directory with the live one with one `renameat2(RENAME_EXCHANGE)`
(Linux), falling back to two renames with a recoverable backup (`recover_interrupted_swap`). One build
at a time per target (`build_lock`, an flock). Used by `vector_build`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2). False when the platform cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _backup_path(target: Path) -> Path:
    return target.parent / f".{target.name}.previous"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap_directory(new: Path, target: Path) -> None:
    """Make `new` the contents of `target` atomically and delete the old contents."""
    recover_interrupted_swap(target)
    if not target.exists():
        os.rename(new, target)
    elif _exchange(new, target):
        shutil.rmtree(new)  # `new` now holds the old store
    else:
        # Fallback: a crash between the two renames leaves the backup, restored by the next build or import.
        backup = _backup_path(target)
        os.rename(target, backup)
        os.rename(new, target)
        shutil.rmtree(backup)
    _fsync_dir(target.parent)


def recover_interrupted_swap(target: Path) -> None:
    """Undo a fallback swap that crashed between its two renames."""
    backup = _backup_path(target)
    if backup.exists():
        if target.exists():
            shutil.rmtree(backup)
        else:
            os.rename(backup, target)


@contextlib.contextmanager
def build_lock(target: Path) -> Iterator[None]:
    """One build, import or export of `target` at a time, across processes (an flock).

    The lock file lives in the temporary directory, named after the target's absolute path, so that
    nothing but the store appears in the repository.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(str(target.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"librarian-vector-db-{digest}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def temp_dir(target: Path, kind: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f".{target.name}.{kind}-", dir=target.parent))
    # mkdtemp makes it private (0700); once swapped in it is the store, readable like any data directory.
    path.chmod(0o755)
    return path


def remove_stale_temp_dirs(target: Path) -> None:
    # Called with the lock held: any temporary directory left is from a build that died.
    for kind in ("build", "import"):
        for stale in target.parent.glob(f".{target.name}.{kind}-*"):
            shutil.rmtree(stale, ignore_errors=True)


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def carry_over_extra_files(old: Path, new: Path) -> None:
    """Files an operator keeps in the store's folder (.gitkeep, a README) survive a rebuild or an import."""
    if not old.is_dir():
        return
    for extra in old.iterdir():
        if extra.is_file() and not _is_chroma_file(extra) and not (new / extra.name).exists():
            shutil.copy2(extra, new / extra.name)


def _is_chroma_file(path: Path) -> bool:
    return path.name.startswith("chroma.sqlite3") or path.name == "manifest.json" or _is_uuid(path.name)


def _is_uuid(name: str) -> bool:
    try:
        uuid.UUID(name)
    except ValueError:
        return False
    return True
