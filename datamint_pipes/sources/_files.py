"""File back ends of a local project: a writable local folder, or any fsspec URL opened read-only.

A project's files are addressed by POSIX paths relative to its root (``resources/<id>/ct.nii.gz``).
Relative paths are checked so that none can escape the root.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import IO, Protocol

import fsspec

from datamint_pipes.errors import ProjectError


def check_relative(relpath: str) -> str:
    """Return ``relpath`` normalised, or raise if it is absolute or climbs out of the root."""
    if not relpath or relpath.startswith(("/", "\\")) or (len(relpath) > 1 and relpath[1] == ":"):
        raise ProjectError(f"{relpath!r} is not a relative path inside the project")
    normal = posixpath.normpath(relpath.replace("\\", "/"))
    if normal == ".." or normal.startswith("../") or normal == ".":
        raise ProjectError(f"{relpath!r} escapes the project folder")
    return normal


class ProjectFiles(Protocol):
    """What a project needs of the place its files live."""

    root: str
    read_only: bool

    def open(self, relpath: str) -> IO[bytes]: ...

    def local_path(self, relpath: str) -> str | None: ...

    def exists(self, relpath: str) -> bool: ...

    def size(self, relpath: str) -> int: ...


class LocalFiles:
    """Files in a local folder; writable unless ``read_only``."""

    def __init__(self, root: str | os.PathLike[str], *, read_only: bool = False) -> None:
        self.root = os.fspath(Path(root).resolve())
        self.read_only = read_only

    def _path(self, relpath: str) -> str:
        return os.path.join(self.root, *check_relative(relpath).split("/"))

    def open(self, relpath: str) -> IO[bytes]:
        return open(self._path(relpath), "rb")

    def local_path(self, relpath: str) -> str | None:
        return self._path(relpath)

    def exists(self, relpath: str) -> bool:
        return os.path.exists(self._path(relpath))

    def size(self, relpath: str) -> int:
        return os.path.getsize(self._path(relpath))

    def put_file(self, source: str | os.PathLike[str], relpath: str) -> None:
        """Copy ``source`` to ``relpath`` atomically (temp file in the same folder, then rename)."""
        self.write_with(relpath, lambda handle: _copy_into(source, handle))

    def put_bytes(self, data: bytes, relpath: str) -> None:
        self.write_with(relpath, lambda handle: handle.write(data))

    def write_with(self, relpath: str, write: object) -> None:
        target = self._path(relpath)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(target))
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)  # type: ignore[operator]
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def remove_tree(self, relpath: str) -> None:
        shutil.rmtree(self._path(relpath), ignore_errors=True)

    def remove(self, relpath: str) -> None:
        path = self._path(relpath)
        if os.path.exists(path):
            os.unlink(path)


def _copy_into(source: str | os.PathLike[str], handle: IO[bytes]) -> None:
    with open(source, "rb") as src:
        shutil.copyfileobj(src, handle, length=1 << 20)


class FsspecFiles:
    """Files behind an fsspec URL (``memory://``, ``s3://``, ``zip::...``, ``http://`` ...), read-only."""

    read_only = True

    def __init__(self, url: str) -> None:
        self.root = url.rstrip("/")
        self._fs, self._base = fsspec.core.url_to_fs(self.root)

    def _path(self, relpath: str) -> str:
        return posixpath.join(self._base, check_relative(relpath))

    def open(self, relpath: str) -> IO[bytes]:
        handle: IO[bytes] = self._fs.open(self._path(relpath), "rb")
        return handle

    def local_path(self, relpath: str) -> str | None:
        if type(self._fs).__name__ == "LocalFileSystem":
            return self._path(relpath)
        return None

    def exists(self, relpath: str) -> bool:
        return bool(self._fs.exists(self._path(relpath)))

    def size(self, relpath: str) -> int:
        return int(self._fs.size(self._path(relpath)))
