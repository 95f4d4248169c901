"""The interface every source offers: a catalogue (resources, annotations, worklists, splits) and bytes.

:class:`~datamint_pipes.sources.local.LocalProject` implements it over a folder; the Datamint server
source implements it over REST. Pipelines and facades depend only on this protocol.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import IO, Protocol, runtime_checkable

from datamint_pipes.model import Annotation, Project, Resource, SplitAssignment, Worklist

__all__ = ["Source"]


@runtime_checkable
class Source(Protocol):
    """A catalogue of resources with their annotations, and access to their files.

    Implementations must pickle (process workers and Ray workers receive them) and reopen any
    connection lazily after unpickling or fork.
    """

    @property
    def project(self) -> Project: ...

    def resources(self, *, include_deleted: bool = False) -> list[Resource]: ...

    def annotations(
        self, resource_ids: Iterable[str] | None = None, *, include_deleted: bool = False
    ) -> list[Annotation]: ...

    def annotations_by_resource(self, *, include_deleted: bool = False) -> dict[str, list[Annotation]]: ...

    def worklists(self) -> list[Worklist]: ...

    def split_assignments(
        self, as_of: str | None = None, *, split_name: str | None = None, include_history: bool = False
    ) -> list[SplitAssignment]: ...

    def open_file(self, relpath: str) -> IO[bytes]:
        """Open a resource file (from ``Resource.files``) or mask file (``Annotation.file``) for reading."""
        ...

    def local_path(self, relpath: str) -> str | None:
        """A local path to the same file when one exists without copying (fast path for decoders)."""
        ...
