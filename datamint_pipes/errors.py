"""The exceptions of datamint-pipes: one small hierarchy.

Every class subclasses :class:`DatamintPipesError` *and* a built-in, so callers can catch either the
library's family or the usual built-in:

================================  ====================  =================================================
class                             also a                raised when
================================  ====================  =================================================
:class:`DatamintPipesError`       ``Exception``         (base; never raised directly)
:class:`ProjectError`             ``ValueError``        a local project or its catalogue is missing,
                                                        malformed, read-only, or asked to store bad input
:class:`DecodeError`              ``ValueError``        a file cannot be decoded (truncated, unsupported)
:class:`AnnotationError`          ``ValueError``        an annotation or its mask does not fit its resource
:class:`FetchError`               ``OSError``           bytes cannot be fetched from a source
:class:`CacheError`               ``OSError``           a cache entry cannot be written or read
:class:`PipelineError`            ``RuntimeError``      the pipeline itself fails (a worker died, ...)
================================  ====================  =================================================

Per-resource errors carry ``resource_id`` and ``filename`` attributes and name both in their message.
Every constructor accepts a single message string, so an error re-raised from a worker process keeps its
type.
"""

from __future__ import annotations

__all__ = [
    "AnnotationError",
    "CacheError",
    "DatamintPipesError",
    "DecodeError",
    "FetchError",
    "PipelineError",
    "ProjectError",
]


class DatamintPipesError(Exception):
    """Base class of every error raised by datamint-pipes.

    ``resource_id`` and ``filename`` name the resource (and file within it) the error is about, when there
    is one; both are also part of ``str(error)``.
    """

    def __init__(
        self,
        message: str,
        *,
        resource_id: str | None = None,
        filename: str | None = None,
    ) -> None:
        self.resource_id = resource_id
        self.filename = filename
        context = []
        if resource_id is not None and f"resource {resource_id}" not in message:
            context.append(f"resource {resource_id}")
        if filename is not None and str(filename) not in message:
            context.append(f"file {filename!s}")
        if context:
            message = f"{message} [{', '.join(context)}]"
        super().__init__(message)

    def __str__(self) -> str:
        # OSError's own __str__ would format errno/strerror/filename (our ``filename`` shadows its field).
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[object, ...]:
        # The message already carries the context; keep the attributes across pickling (process workers).
        return (_rebuild, (type(self), str(self), self.resource_id, self.filename))


def _rebuild(
    cls: type[DatamintPipesError], message: str, resource_id: str | None, filename: str | None
) -> DatamintPipesError:
    error = cls(message)
    error.resource_id = resource_id
    error.filename = filename
    return error


class ProjectError(DatamintPipesError, ValueError):
    """A local project cannot be opened, or an edit to it is invalid; the catalogue is left unchanged."""


class DecodeError(DatamintPipesError, ValueError):
    """A file cannot be decoded: truncated, corrupt, or of an unsupported kind."""


class AnnotationError(DatamintPipesError, ValueError):
    """An annotation does not fit its resource (mask shape, frame index, unknown label, unreadable file)."""


class FetchError(DatamintPipesError, OSError):
    """Bytes for a resource or annotation could not be fetched, after any retries."""


class CacheError(DatamintPipesError, OSError):
    """A cache entry could not be written or read back intact."""


class PipelineError(DatamintPipesError, RuntimeError):
    """The pipeline machinery failed (for example a worker process died)."""
