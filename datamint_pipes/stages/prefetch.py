"""Fill the caches ahead of training: decode every resource once, in parallel, with a progress bar."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from datamint_pipes.model import Resource
from datamint_pipes.stages.load import ReadResource

__all__ = ["prefetch_decoded"]


def prefetch_decoded(
    resources: Sequence[Resource],
    decode_stage: Callable[[Any], Any],
    *,
    max_workers: int = 4,
    progress: bool = True,
) -> None:
    """Run ``decode_stage`` (a cached decode, e.g. ``CachedDecode``) on every resource with ``max_workers``
    threads; the decoders release the GIL. Already cached resources cost one memory map each."""
    read = ReadResource(resources)
    bar: Any = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(resources), desc="prefetch", unit="resource", leave=False)
    try:
        with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
            for _ in pool.map(lambda i: decode_stage(read(i)), range(len(resources))):
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
