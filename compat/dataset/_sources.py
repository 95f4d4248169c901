"""Turning the facades' ``project=`` / ``resources=`` / ``server_url=`` arguments into a source."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from datamint_pipes.errors import ProjectError
from datamint_pipes.model import Project, Resource
from datamint_pipes.sources.base import Source
from datamint_pipes.sources.local import CATALOGUE, SOURCE_ROOT_KEY, LocalProject, open_project, store_root


def uses_server(server_url: str | None) -> bool:
    return bool(server_url or os.environ.get("DATAMINT_API_URL"))


def open_source(project: Any, *, server_url: str | None, api_key: str | None) -> Source:
    """The source of ``project``: a source object as is; a :class:`Project`, name, id, path or URL otherwise.

    With ``server_url`` (or ``$DATAMINT_API_URL``) a name or id is looked up on that server; without, it is a
    local project folder, fsspec URL or name in the local store root.
    """
    if isinstance(project, Source) and not isinstance(project, (str, os.PathLike)):
        return project
    reference = project.name if isinstance(project, Project) else project
    if not isinstance(reference, (str, os.PathLike)):
        raise TypeError(f"project must be a name, id, path, URL, Project or source, got {type(project).__name__}")
    if uses_server(server_url):
        from datamint_pipes.sources.server import ServerSource

        return ServerSource(os.fspath(reference), url=server_url, api_key=api_key)
    try:
        return open_project(reference, read_only=True)
    except ProjectError:
        # Not a folder, URL or name in the store root: a project id (or a Project whose id it is), as the
        # contract allows.
        by_id = _stored_project_with_id(project.id if isinstance(project, Project) else os.fspath(reference))
        if by_id is None:
            raise
        return by_id


def _stored_project_with_id(project_id: str) -> LocalProject | None:
    """The project of the local store root whose id is ``project_id`` (folders are named by project name)."""
    root = store_root()
    if not project_id or not root.is_dir():
        return None
    for folder in sorted(root.iterdir()):
        if not (folder / CATALOGUE).is_file():
            continue
        try:
            project = LocalProject.open(folder, read_only=True)
        except ProjectError:
            continue  # an unreadable project is not the one asked for
        if project.id == project_id:
            return project
    return None


def source_of_resources(
    resources: Sequence[Resource | str], *, server_url: str | None, api_key: str | None
) -> tuple[Source, list[Resource]]:
    """The source and full :class:`Resource` records of a ``resources=`` argument.

    Resources read from a local project remember its folder (``Resource.extra['_source_root']``). Resources
    of a server project are selected with ``project=`` and :meth:`filter`/:meth:`subset`.
    """
    if not resources:
        raise ValueError("resources= is empty")
    roots = {r.extra.get(SOURCE_ROOT_KEY) for r in resources if isinstance(r, Resource)}
    if len(roots) == 1 and None not in roots and all(isinstance(r, Resource) for r in resources):
        project: LocalProject = open_project(str(roots.pop()), read_only=True)
        return project, [r for r in resources if isinstance(r, Resource)]
    raise ValueError(
        "resources= takes Resource objects read from one local project (LocalProject.resources()); for ids or "
        "server resources, open the project with project= (and server_url=) and narrow it with .filter() or "
        ".subset()"
    )
