"""Atomic file output and path safety.

Every output is written under a temporary name in its destination folder and renamed into
place only when complete, so a killed job never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import InputError

__all__ = ["atomic_path", "atomic_dir", "resolve_inside", "write_text_atomic"]


@contextlib.contextmanager
def atomic_path(dest, suffix=None):
    """Yield a temporary file path next to ``dest``; rename it to ``dest`` on success.

    On an exception the temporary file is removed and ``dest`` is left untouched.
    ``suffix`` defaults to ``dest``'s own suffix (some writers pick the format from it).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    suffix = dest.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.tmp.", suffix=suffix, dir=dest.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; outputs get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(dest):
    """Yield a temporary directory next to ``dest``; it replaces ``dest`` on success."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
    try:
        yield tmp
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, old / "x")
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(dest, text):
    """Write ``text`` to ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        Path(tmp).write_text(text)


def resolve_inside(root, relative, source=None, line=None):
    """Join ``relative`` onto ``root`` and refuse paths that escape ``root``.

    ``source``/``line`` name the file and line the path came from, for the error message.
    """
    rel = str(relative)
    if os.path.isabs(rel) or ".." in Path(rel).parts:
        raise InputError(source or root, f"path {rel!r} must be relative to {root} and must not contain '..'", line)
    root_r = Path(root).resolve()
    full = (root_r / rel).resolve()
    if root_r != full and root_r not in full.parents:
        raise InputError(source or root, f"path {rel!r} resolves outside {root}", line)
    return full
