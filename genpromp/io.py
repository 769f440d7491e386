"""Atomic file output and path safety.

Every output is written under a temporary name in its destination folder and renamed into
place only when complete, so a killed job never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

from .errors import InputError

__all__ = ["atomic_path", "atomic_dir", "resolve_inside", "write_text_atomic", "current_umask"]


@contextlib.contextmanager
def atomic_path(dest, suffix=None):
    """Yield a temporary file path next to ``dest``; rename it to ``dest`` on success.

    On an exception the temporary file is removed and ``dest`` is left untouched.
    ``suffix`` defaults to ``dest``'s own suffix (some writers pick the format from it).
    Whatever the writer did to the file's mode (mkstemp and safetensors both create 0600 files),
    ``dest`` gets the permissions of a file created under the current umask (0644 under umask 022).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    suffix = dest.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.tmp.", suffix=suffix, dir=dest.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _apply_umask(Path(tmp))
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(dest):
    """Yield a temporary directory next to ``dest``; it replaces ``dest`` on success.

    The finished tree gets umask-based permissions (folders 0755, files 0644 under umask 022),
    whatever modes the writers inside used (mkdtemp creates 0700, safetensors files are 0600).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        _apply_umask(tmp)
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


def current_umask():
    """The process umask (read from /proc where possible: setting it to read it races with threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _apply_umask(path):
    """Give ``path`` (and, for a folder, everything below it) the mode a new file or folder gets
    under the current umask; files keep their executable bit. Symlinks are left alone."""
    mask = current_umask()

    def fix(p):
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            return
        full = 0o777 if stat.S_ISDIR(st.st_mode) or st.st_mode & stat.S_IXUSR else 0o666
        os.chmod(p, full & ~mask)

    fix(path)
    if path.is_dir() and not path.is_symlink():
        for folder, dirs, files in os.walk(path):
            for name in dirs + files:
                fix(os.path.join(folder, name))


def write_text_atomic(dest, text):
    """Write ``text`` to ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        Path(tmp).write_text(text)


def resolve_inside(root, relative, source=None, line=None):
    """Join ``relative`` onto ``root`` and refuse paths that escape ``root``.

    Containment is checked on the normalised path, not after following symlinks: a dataset whose
    ``images/`` (or any folder below the root) is a symlink to another disk is fine, while an
    absolute path or a ``..`` component in a listing file is refused. ``source``/``line`` name
    the file and line the path came from, for the error message. Returns the absolute path
    (symlinks kept).
    """
    rel = str(relative)
    if os.path.isabs(rel) or ".." in Path(rel).parts:
        raise InputError(source or root, f"path {rel!r} must be relative to {root} and must not contain '..'", line)
    root_n = Path(os.path.normpath(os.path.abspath(root)))
    full = Path(os.path.normpath(root_n / rel))
    if root_n != full and root_n not in full.parents:
        raise InputError(source or root, f"path {rel!r} lies outside {root}", line)
    return full
