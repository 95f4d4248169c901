"""The demo: build the sample projects, stream them through a multi-worker pipeline, report throughput,
and write a preview grid of a batch with mask overlays.

Run it with ``datamint-pipes demo`` (the README's first command). Stages run on thread workers: the decoders
release the GIL, and threads let every stage's timer live in one place.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datamint_pipes.pipeline import Pipeline
from datamint_pipes.samples import build_samples
from datamint_pipes.sources.local import LocalProject
from datamint_pipes.stages.annotations import LoadMasks
from datamint_pipes.stages.augment import Resize
from datamint_pipes.stages.collate import Collate
from datamint_pipes.stages.expand import SliceVolume
from datamint_pipes.stages.load import DecodeImage, ReadResource

log = logging.getLogger(__name__)

PREVIEW_SIZE = 128


def _payload_bytes(value: Any) -> int:
    if isinstance(value, list):
        return sum(_payload_bytes(v) for v in value)
    if isinstance(value, dict):
        total = 0
        if isinstance(value.get("image"), np.ndarray):
            total += value["image"].nbytes
        total += sum(m.nbytes for m in (value.get("masks") or {}).values())
        return total
    return 0


@dataclass
class StageTimer:
    """Wrap a stage; count calls, output items, output bytes and time spent (shared by thread workers)."""

    name: str
    stage: Callable[[Any], Any]
    calls: int = 0
    items: int = 0
    nbytes: int = 0
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self, value: Any) -> Any:
        start = time.perf_counter()
        out = self.stage(value)
        elapsed = time.perf_counter() - start
        count = len(out) if isinstance(out, list) else 1
        size = _payload_bytes(out)
        with self._lock:
            self.calls += 1
            self.items += count
            self.nbytes += size
            self.seconds += elapsed
        return out


def build_demo_pipeline(project: LocalProject, timers: dict[str, StageTimer], seed: int = 0) -> Pipeline:
    """The demo's pipeline: read -> decode -> masks -> axial slices -> resize -> batch -> collate."""
    resources = project.resources()
    annotations = project.annotations_by_resource()

    def timed(name: str, stage: Callable[[Any], Any]) -> StageTimer:
        timer = StageTimer(name, stage)
        timers[f"{project.name}/{name}"] = timer
        return timer

    return (
        Pipeline(num_items=len(resources), seed=seed, shuffle=True)
        .map(timed("read", ReadResource(resources, annotations)))  # -> index, resource_id, resource, annotations
        .map(timed("decode", DecodeImage(project)))  # -> image (C,[N,]H,W), metainfo, spacing, affine
        .map(timed("masks", LoadMasks(project)))  # -> masks {annotation_id: uint8 ([N,]H,W)}
        .expand(timed("slice", SliceVolume("axial")))  # volumes/videos -> (C,H,W) slices
        .map(timed("resize", Resize(PREVIEW_SIZE, PREVIEW_SIZE)))  # -> image (C,128,128), masks (128,128)
        .map(timed("to_rgb", ToRGBFloat()))  # -> image float32 (3,128,128) in [0,1]
        .batch(16, drop_last=False)
        .collate(Collate())
    )


@dataclass(frozen=True)
class ToRGBFloat:
    """Scale each image to [0,1] float32 by its own range and give it three channels (for a mixed grid)."""

    def __call__(self, sample: Any) -> Any:
        image = sample["image"].astype(np.float32)
        if image.shape[0] != 3:
            # Grey, grey+alpha, 4D NIfTI (time as channels), RGBA: show the first channel, or RGB of RGBA.
            image = image[:3] if image.shape[0] == 4 else np.repeat(image[:1], 3, axis=0)
        low, high = float(image.min()), float(image.max())
        image = (image - low) / (high - low) if high > low else np.zeros_like(image)
        masks = sample.get("masks") or {}
        union = np.zeros(image.shape[1:], np.uint8)
        for mask in masks.values():
            union |= mask.astype(bool).astype(np.uint8)
        out = {k: v for k, v in sample.items() if k not in ("metainfo", "masks", "annotations", "resource")}
        out.update(image=image, mask=union, filename=sample["resource"].filename)
        return out


def _write_preview(batches: dict[str, dict[str, Any]], path: Path, columns: int = 6) -> None:
    """One row per project: ``columns`` items spread over its first batch, masks overlaid in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(batches), columns, figsize=(columns * 2.2, len(batches) * 2.5), squeeze=False)
    for row, (name, batch) in enumerate(batches.items()):
        images, masks = batch["image"].numpy(), batch["mask"].numpy()
        picks = np.unique(np.linspace(0, len(images) - 1, columns).round().astype(int))
        for col in range(columns):
            ax = axes[row, col]
            ax.axis("off")
            if col >= len(picks):
                continue
            i = int(picks[col])
            ax.imshow(np.transpose(images[i], (1, 2, 0)))
            overlay = np.zeros((*masks[i].shape, 4), np.float32)
            overlay[masks[i] > 0] = (1.0, 0.15, 0.15, 0.35)
            ax.imshow(overlay)
            title = str(batch["filename"][i])[-18:]
            slice_index = batch.get("slice_index")
            if isinstance(slice_index, list) and slice_index[i] is not None:
                title += f" [{slice_index[i]}]"
            elif slice_index is not None and not isinstance(slice_index, list):
                title += f" [{int(slice_index[i])}]"
            ax.set_title(title, fontsize=7)
        axes[row, 0].text(-0.08, 0.5, name, transform=axes[row, 0].transAxes, rotation=90, va="center", ha="right")
    fig.suptitle("first batch of each sample project (masks: union of annotators' segmentations)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def default_samples_dir() -> Path:
    """Where the demo keeps the sample projects: ``$XDG_CACHE_HOME/datamint-pipes/samples``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "datamint-pipes" / "samples"


def run_demo(out_dir: str = "out/demo", num_workers: int = 2, epochs: int = 2, samples_dir: str | None = None) -> int:
    """Build (or reuse) the samples in a cache folder, stream them ``epochs`` times, print the throughput
    tables and write ``out_dir/preview.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples_root = Path(samples_dir) if samples_dir else default_samples_dir()
    start = time.perf_counter()
    projects = build_samples(samples_root)
    print(f"sample projects ready in {time.perf_counter() - start:.1f} s under {samples_root}")
    timers: dict[str, StageTimer] = {}
    previews: dict[str, dict[str, Any]] = {}
    rows = []
    for project in projects:
        pipeline = build_demo_pipeline(project, timers)
        for epoch in range(epochs):
            count = 0
            begin = time.perf_counter()
            with pipeline.loader(num_workers=num_workers, worker_type="thread") as loader:
                for batch in loader:
                    count += len(batch["image"])
                    previews.setdefault(project.name, batch)
            wall = time.perf_counter() - begin
            rows.append((project.name, epoch, count, wall))
    print()
    print(f"{'project':<16} {'epoch':>5} {'slices':>7} {'seconds':>8} {'slices/s':>9}")
    for name, epoch, count, wall in rows:
        print(f"{name:<16} {epoch:>5} {count:>7} {wall:>8.2f} {count / wall:>9.1f}")
    print()
    print(f"per stage (busy time summed over {num_workers} workers, all projects and epochs)")
    print(f"{'stage':<8} {'calls':>7} {'items out':>9} {'items/s':>9} {'MB/s out':>9}")
    for stage in ("read", "decode", "masks", "slice", "resize", "to_rgb"):
        parts = [t for key, t in timers.items() if key.endswith(f"/{stage}")]
        calls = sum(t.calls for t in parts)
        items = sum(t.items for t in parts)
        seconds = sum(t.seconds for t in parts) or 1e-9
        mb = sum(t.nbytes for t in parts) / 1e6
        rate = f"{mb / seconds:>9.1f}" if stage != "read" else f"{'-':>9}"  # read is a catalogue lookup
        print(f"{stage:<8} {calls:>7} {items:>9} {items / seconds:>9.0f} {rate}")
    path = out / "preview.png"
    _write_preview(previews, path)
    print(f"\npreview written to {path}")
    return 0
