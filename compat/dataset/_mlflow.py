"""MLflow lineage for a dataset (imported only when MLflow is installed)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def build_dataset(dataset: Any) -> Any:
    """An ``mlflow.data`` dataset whose source names the project, digest hashes the resource ids and
    versions, and tags carry the split lineage (``split_name``, ``split_source``, ``split_as_of_timestamp``)."""
    import mlflow.data
    import pandas as pd
    from mlflow.data.pandas_dataset import from_pandas

    rows = [
        {"resource_id": r.id, "filename": r.filename, "created_at": r.created_at, "size": r.size}
        for r in dataset.resources
    ]
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]
    project = dataset.project.name if dataset.project is not None else "resources"
    frame = pd.DataFrame(rows)
    result = from_pandas(frame, source=f"datamint://{project}", name=f"{project}:{dataset.split_name or 'all'}")
    result._digest = digest  # mlflow computes its own from the frame; keep the catalogue's
    result.split_lineage = {
        "split_name": dataset.split_name,
        "split_source": dataset.split_source,
        "split_as_of_timestamp": dataset.split_as_of_timestamp,
    }
    _ = mlflow.data
    return result
