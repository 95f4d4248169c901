"""The compat layer's exceptions, documented as ``datamint.dataset.base.DatamintDatasetException``.

They live here, not in :mod:`.base`, so that item stages (:mod:`._items`) can raise them: a stage error must
have the documented type whether it is raised by ``__getitem__`` or in a worker of ``pipeline().loader()``.
"""

from __future__ import annotations

from datamint_pipes.errors import DatamintPipesError

__all__ = ["DatamintDatasetException", "DatamintException"]


class DatamintException(DatamintPipesError):
    """Base of the compat layer's exceptions (the documented ``DatamintException``)."""


class DatamintDatasetException(DatamintException):
    """Exception raised for dataset errors."""
