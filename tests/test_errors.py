"""The error hierarchy: built-in bases, context in messages, pickling across processes."""

from __future__ import annotations

import pickle

import pytest

from datamint_pipes import errors

BUILTIN = {
    errors.ProjectError: ValueError,
    errors.DecodeError: ValueError,
    errors.AnnotationError: ValueError,
    errors.FetchError: OSError,
    errors.CacheError: OSError,
    errors.PipelineError: RuntimeError,
}


def test_public_surface_is_exactly_all() -> None:
    public = {name for name in vars(errors) if not name.startswith("_") and isinstance(getattr(errors, name), type)}
    assert public == set(errors.__all__)


@pytest.mark.parametrize("cls", sorted(BUILTIN, key=lambda c: c.__name__))
def test_each_error_is_also_a_builtin_and_names_its_resource(cls: type[errors.DatamintPipesError]) -> None:
    error = cls("cannot read pixels", resource_id="res-1", filename="scan.dcm")
    assert isinstance(error, errors.DatamintPipesError)
    assert isinstance(error, BUILTIN[cls])
    assert str(error) == "cannot read pixels [resource res-1, file scan.dcm]"
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert str(copy) == str(error)
    assert (copy.resource_id, copy.filename) == ("res-1", "scan.dcm")
    # A single message string is enough, so worker re-raising (exc_type(message)) keeps the type.
    assert str(cls("plain")) == "plain"


def test_context_already_in_the_message_is_not_repeated() -> None:
    error = errors.DecodeError("resource r9 is broken: scan.dcm truncated", resource_id="r9", filename="scan.dcm")
    assert str(error) == "resource r9 is broken: scan.dcm truncated"
