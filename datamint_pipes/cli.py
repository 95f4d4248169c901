"""The ``datamint-pipes`` command: make and inspect local projects, build the samples, run the demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datamint_pipes.errors import DatamintPipesError
from datamint_pipes.model import LabelSpec
from datamint_pipes.sources.local import LocalProject, open_project

log = logging.getLogger("datamint_pipes")


def _cmd_create(args: argparse.Namespace) -> int:
    project = LocalProject.create(args.folder, args.name, description=args.description)
    print(f"created project {project.name!r} ({project.id}) in {project.root}")
    return 0


def _cmd_add(args: argparse.Namespace) -> int:
    project = open_project(args.project)
    common: dict[str, Any] = {"tags": args.tag or (), "patient_id": args.patient_id, "mimetype": args.mimetype}
    if args.series:
        resources = [project.add_resource(args.files, filename=args.filename, resource_id=args.id, **common)]
    else:
        if len(args.files) > 1 and (args.id or args.filename):
            raise DatamintPipesError("--id and --filename name one resource; add files one at a time or use --series")
        resources = [project.add_resource(f, filename=args.filename, resource_id=args.id, **common) for f in args.files]
    for resource in resources:
        print(f"{resource.id}\t{resource.filename}\t{resource.metadata.get('shape')}")
    return 0


def _cmd_annotate(args: argparse.Namespace) -> int:
    project = open_project(args.project)
    geometry = None
    if args.box:
        x1, y1, x2, y2 = args.box
        z = args.frame or 0
        geometry = {"points": [[x1, y1, z], [x2, y1, z], [x1, y2, z], [x2, y2, z]]}
    annotation = project.add_annotation(
        args.resource_id,
        args.identifier,
        args.type,
        created_by=args.author,
        frame_index=args.frame,
        mask=args.mask,
        geometry=geometry,
        text_value=args.value,
        worklist_id=args.worklist,
    )
    print(annotation.id)
    return 0


def _cmd_worklist(args: argparse.Namespace) -> int:
    project = open_project(args.project)
    specs: list[LabelSpec] = []
    if args.specs:
        specs.extend(LabelSpec.from_dict(s) for s in json.loads(Path(args.specs).read_text()))
    specs.extend(LabelSpec(type="label", identifier=name) for name in args.label or ())
    specs.extend(LabelSpec(type="label", identifier=name, scope="frame") for name in args.frame_label or ())
    for text in args.category or ():
        identifier, _, values = text.partition("=")
        specs.append(LabelSpec(type="category", identifier=identifier, values=tuple(v for v in values.split(",") if v)))
    for text in args.segmentation or ():
        identifier, _, index = text.partition("=")
        specs.append(LabelSpec(type="segmentation", identifier=identifier, index=int(index) if index else None))
    worklist = project.add_worklist(args.name, specs, annotators=args.annotator or ())
    print(worklist.id)
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    project = open_project(args.project)
    if args.split_name == "-":
        project.unassign_split(args.resource_ids, at=args.at)
    else:
        project.assign_split(args.resource_ids, args.split_name, at=args.at)
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from datamint_pipes.sources import importers

    project = open_project(args.project)
    if args.command == "import-msd":
        added = importers.import_msd(project, args.folder)
    else:
        added = importers.import_folder(project, args.folder, labels_csv=args.labels)
    print(f"imported {len(added)} resources into {project.name}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    summary = open_project(args.project, read_only=True).summary()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"project {summary['project']} ({summary['id']}) at {summary['root']}")
    print(f"  resources: {summary['resources']}    annotations: {summary['annotations']}")
    for key in ("by_kind", "by_format", "by_annotator", "by_label", "by_split"):
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(summary[key].items())) or "-"
        print(f"  {key[3:]:<10} {counts}")
    print(f"  worklists  {', '.join(summary['worklists']) or '-'}")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from datamint_pipes import samples

    for project in samples.build_samples(args.folder, overwrite=args.overwrite):
        print(f"{project.name}: {project.project.resource_count} resources in {project.root}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from datamint_pipes import demo

    return demo.run_demo(out_dir=args.out, num_workers=args.workers, epochs=args.epochs, samples_dir=args.samples)


def _cmd_serve(args: argparse.Namespace) -> int:
    import contextlib
    import os

    try:
        from datamint_pipes import serve
        from datamint_pipes.sources.faults import FaultInjector, FaultRates
    except ImportError as error:
        raise DatamintPipesError(
            f"serve needs the 'serve' extra: pip install 'datamint-pipes[serve]' ({error})"
        ) from error
    api_key = args.api_key or os.environ.get("DATAMINT_API_KEY")
    if not api_key:
        raise DatamintPipesError("serve needs an API key: set DATAMINT_API_KEY (or pass --api-key)")
    wrap = None
    if args.faults or args.latency:
        try:
            injector_args = {"rates": FaultRates.uniform(args.faults or 0.0), "latency_seconds": args.latency}
        except ValueError as error:
            raise DatamintPipesError(f"--faults: {error}") from error

        def wrap(app: Any) -> Any:
            return FaultInjector(app, seed=args.faults_seed, **injector_args)

    def ready(url: str) -> None:
        print(f"serving {args.project} at {url} (Ctrl-C stops)", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        serve.serve(
            args.project,
            api_key=api_key,
            host=args.host,
            port=args.port,
            read_only=True if args.read_only else None,
            wrap=wrap,
            on_ready=ready,
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="datamint-pipes", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("create", help="create an empty local project")
    p.add_argument("folder")
    p.add_argument("--name")
    p.add_argument("--description")
    p.set_defaults(func=_cmd_create)

    p = sub.add_parser("add", help="copy files into a project as resources")
    p.add_argument("project")
    p.add_argument("files", nargs="+")
    p.add_argument("--series", action="store_true", help="the files are the slices of one DICOM series")
    p.add_argument("--id")
    p.add_argument("--filename")
    p.add_argument("--mimetype")
    p.add_argument("--tag", action="append")
    p.add_argument("--patient-id")
    p.set_defaults(func=_cmd_add)

    p = sub.add_parser("annotate", help="add a label, category, segmentation or box to a resource")
    p.add_argument("project")
    p.add_argument("resource_id")
    p.add_argument("identifier")
    p.add_argument("--type", default="label", choices=["label", "category", "segmentation", "square"])
    p.add_argument("--author")
    p.add_argument("--frame", type=int, help="frame index: makes the annotation frame-scoped")
    p.add_argument("--mask", help="PNG (2D/frame) or NIfTI (volume) mask file for a segmentation")
    p.add_argument("--value", help="category value")
    p.add_argument("--box", type=float, nargs=4, metavar=("X1", "Y1", "X2", "Y2"))
    p.add_argument("--worklist")
    p.set_defaults(func=_cmd_annotate)

    p = sub.add_parser("worklist", help="define a worklist and its label schema")
    p.add_argument("project")
    p.add_argument("name")
    p.add_argument("--specs", help="JSON file with a list of label specs")
    p.add_argument("--label", action="append", help="image label")
    p.add_argument("--frame-label", action="append")
    p.add_argument("--category", action="append", help="NAME=value1,value2")
    p.add_argument("--segmentation", action="append", help="NAME or NAME=INDEX (1-based code)")
    p.add_argument("--annotator", action="append")
    p.set_defaults(func=_cmd_worklist)

    p = sub.add_parser("split", help="assign resources to a split ('-' removes their assignment)")
    p.add_argument("project")
    p.add_argument("split_name")
    p.add_argument("resource_ids", nargs="+")
    p.add_argument("--at", help="ISO 8601 timestamp of the assignment (default: now)")
    p.set_defaults(func=_cmd_split)

    for name, help_text in (("import-folder", "import a folder of files"), ("import-msd", "import an MSD task")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("project")
        p.add_argument("folder")
        if name == "import-folder":
            p.add_argument("--labels", help="CSV: filename,label[,label...]")
        p.set_defaults(func=_cmd_import)

    p = sub.add_parser("info", help="counts by kind, format, annotator, label and split")
    p.add_argument("project")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("sample", help="build the sample projects from real files shipped in packages")
    p.add_argument("folder")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("demo", help="build the samples, stream them through a multi-worker pipeline")
    p.add_argument("--out", default="out/demo", help="folder for the preview PNG")
    p.add_argument("--samples", help="folder for the sample projects (default: a per-user cache folder)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("serve", help="serve a project over the Datamint REST API (needs the 'serve' extra)")
    p.add_argument("project")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (0: any free port; default 8765)")
    p.add_argument("--api-key", help="the key clients must send (default: $DATAMINT_API_KEY, which keeps it out of ps)")
    p.add_argument("--read-only", action="store_true", help="refuse split assignments even if the folder is writable")
    p.add_argument("--faults", type=float, metavar="RATE", help="testing: inject failures into this share of requests")
    p.add_argument("--faults-seed", type=int, default=0)
    p.add_argument("--latency", type=float, default=0.0, metavar="SECONDS", help="testing: delay every request")
    p.set_defaults(func=_cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args))
    except DatamintPipesError as error:
        print(f"datamint-pipes: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
