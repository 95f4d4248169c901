"""``Annotation``: the documented annotation record (the same class as ``datamint_pipes.model.Annotation``)."""

from datamint_pipes.model import Annotation

__all__ = ["Annotation"]
