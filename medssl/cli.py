"""The ``medssl`` command: a thin door to each stage (DESIGN.md section 3).

Each subcommand parses its options, calls one function of its stage and prints a summary.
Failures print one line naming the input and the reason, never a traceback, never an
identifier.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from pathlib import Path

from medssl.errors import MedsslError
from medssl.io.zip_archive import MAX_ZIP_MEMBERS
from medssl.types import IrregularPolicy

DEFAULT_KEY_FILE = "~/.config/medssl/project.key"


def _ingest_parser(sub) -> None:
    p = sub.add_parser("ingest", help="DICOM/NIfTI/NRRD/DICOMweb -> de-identified canonical volumes in a store")
    p.add_argument("sources", nargs="*", help="folders, zip files, files, or dicomweb+http(s)://host/dicom-web?modality=CT&study_date=A-B (optional with --labels)")
    p.add_argument("--out", required=True, type=Path, help="the store folder (created if missing)")
    p.add_argument("--workers", type=int, default=1, help="processes for reading and converting (default 1)")
    p.add_argument("--key-file", default=os.environ.get("MEDSSL_KEY_FILE", DEFAULT_KEY_FILE), help="project pseudonymisation key (created 0600 on first use; keep it outside the store)")
    p.add_argument("--irregular", choices=[p.value for p in IrregularPolicy], default=IrregularPolicy.REJECT.value, help="gantry tilt, missing or uneven slices: reject (default) or resample")
    p.add_argument("--allow-burned-in", action="store_true", help="ingest images that may carry burned-in text (after a human review)")
    p.add_argument("--skip-localizers", action="store_true", help="do not store localizer/scout images (by default they are stored as 2D images)")
    p.add_argument("--date-shift", action="store_true", help="shift dates per patient instead of removing them")
    p.add_argument("--keep-private", action="append", default=[], metavar="CREATOR:ELEMENT", help="keep a private element, e.g. 'SIEMENS CSA HEADER:0x10' (repeatable)")
    p.add_argument("--volume-modality", metavar="MODALITY", type=str.upper, help="modality to record for NIfTI/NRRD inputs, which carry none (e.g. CT, MR)")
    p.add_argument("--max-gb", type=float, default=4.0, help="refuse any single file or volume larger than this (GiB), decompressed size included")
    p.add_argument("--max-zip-members", type=int, default=MAX_ZIP_MEMBERS, metavar="N", help=f"refuse a zip archive of more than N entries, as one row (default {MAX_ZIP_MEMBERS:,})")
    p.add_argument("--follow-links", action="store_true", help="read symbolic links to files outside the given sources (refused by default: 'link_outside')")
    p.add_argument("--labels", type=Path, metavar="TABLE", help="label table (YAML or CSV, see docs/labels.md): its images are ingested too, its masks, classes and boxes land in STORE/labels")
    p.add_argument("--locate", metavar="REF", help="print the source files whose reference starts with REF (key holders only), then exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and scripts)")
    p.set_defaults(func=_run_ingest)


def _run_ingest(args: argparse.Namespace) -> int:
    from medssl.deid import DeidOptions, load_or_create_key
    from medssl.store.ingest import IngestOptions, ingest, locate
    from medssl.store.report import print_summary

    if not args.sources and args.labels is None:
        raise MedsslError("give one or more SOURCES, or a label table with --labels TABLE")
    key = load_or_create_key(Path(args.key_file).expanduser())
    if args.locate:
        for path in locate(args.locate, args.sources, key):
            print(path)
        return 0
    keep = frozenset(_parse_private(v) for v in args.keep_private)
    options = IngestOptions(
        workers=max(1, args.workers),
        irregular=IrregularPolicy(args.irregular),
        allow_burned_in=args.allow_burned_in,
        skip_localizers=args.skip_localizers,
        deid=DeidOptions(date_shift=args.date_shift, keep_private=keep),
        max_bytes=int(args.max_gb * (1 << 30)),
        progress=not args.no_progress,
        volume_modality=args.volume_modality,
        labels=args.labels,
        follow_links=args.follow_links,
        max_zip_members=max(1, args.max_zip_members),
    )
    summary = ingest(args.sources, args.out, key, options)
    print_summary(summary, args.out)
    return 0


def _parse_private(value: str) -> tuple[str, int]:
    creator, _, element = value.rpartition(":")
    try:
        return creator, int(element, 0)
    except ValueError:
        raise MedsslError(f"--keep-private '{value}': expected CREATOR:ELEMENT with ELEMENT like 0x10") from None


def _pipeline_parser(sub) -> None:
    p = sub.add_parser(
        "pipeline",
        help="run a multi-stage recipe (pipelines/*.yaml)",
        description="Run the stages of a YAML recipe in order, each the medssl command a person would type "
        "(stages: [{ingest: {sources: [...], out: STORE}}, {pretrain: {config: [...], data.store: STORE}}, ...]). "
        "Every stage is checked against the real parser before the first one runs; the first failing stage stops the rest.",
    )
    p.add_argument("file", type=Path, metavar="RECIPE", help="the recipe: a YAML file with a 'stages' list (e.g. pipelines/demo.yaml)")
    p.set_defaults(func=_run_pipeline)


def _run_pipeline(args: argparse.Namespace) -> int:
    from medssl.pipeline import run_pipeline

    return run_pipeline(args.file, build_parser(), main)


def _probe_set_parser(sub) -> None:
    p = sub.add_parser(
        "probe-set",
        help="labelled crops of the store's held-out labelled volumes for the online probe (--probe.path of medssl pretrain)",
        description="Cut labelled crops, one structure each, from the labelled volumes that pretraining holds out "
        "(the same split as --data.val_fraction and --data.seed), and write them to one .safetensors file. "
        "medssl pretrain --probe.path FILE then fits a kNN and a linear probe on the frozen backbone during pretraining.",
    )
    p.add_argument("--store", required=True, type=Path, help="a store with label maps (medssl ingest --labels)")
    p.add_argument("--out", required=True, type=Path, help="the probe set file to write (.safetensors)")
    p.add_argument("--structures", nargs="+", metavar="NAME", help="structures to probe (default: all with enough voxels)")
    p.add_argument("--crop-size", nargs=3, type=int, metavar=("X", "Y", "Z"), help="crop size in cached voxels (default: the plan's)")
    p.add_argument("--per-class", type=int, default=20, help="crops per structure and volume (default 20)")
    p.add_argument("--min-voxels", type=int, default=50, help="a structure counts in a volume from this many voxels (default 50)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="pretraining's --data.val_fraction: probe volumes are its held-out patients (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="pretraining's --data.seed (the split) and the crop draw (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and scripts)")
    p.set_defaults(func=_run_probe_set)


def _run_probe_set(args: argparse.Namespace) -> int:
    from collections import Counter

    from medssl.data.probe_set import build_probe_set

    if not (args.store / "manifest.sqlite").is_file():
        raise MedsslError(f"--store {args.store}: not a store (no manifest.sqlite)")
    probe = build_probe_set(args.store, args.structures, args.crop_size, args.per_class, args.min_voxels, args.val_fraction, args.seed, progress=not args.no_progress)
    probe.save(args.out)
    counts = Counter(probe.labels.tolist())
    volumes = len(probe.groups.unique())
    print(f"probe set {args.out}: {len(probe.labels)} crops {tuple(probe.images.shape[2:])} of {volumes} volumes")
    for c, name in enumerate(probe.class_names):
        print(f"  {name:<24} {counts.get(c, 0)}")
    print(f"use it with: medssl pretrain ... --probe.path {args.out}")
    return 0


def _passthrough_parser(sub, name: str, help: str, target: str, short_help: str | None = None) -> None:
    """A stage whose own parser (LightningCLI, export's) reads everything after its name;
    ``short_help`` answers ``-h``/``--help`` without importing the stage (LightningCLI takes
    seconds to build its parser; ``--help-all`` asks it for every option)."""
    p = sub.add_parser(name, help=help, add_help=False, prefix_chars="\0")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda args: _delegate(target, args.args, short_help))


def _delegate(target: str, argv: list[str], short_help: str | None = None) -> int:
    if short_help is not None and ("-h" in argv or "--help" in argv):
        print(short_help)
        return 0
    module, _, function = target.partition(":")
    import importlib

    return int(getattr(importlib.import_module(module), function)(argv) or 0)


def _training_help(command: str, example: str, specific: list[tuple[str, str]], checkpoints: str, model_class: str) -> str:
    """The short ``--help`` of ``medssl pretrain``/``finetune``: the options most runs set."""
    options = [
        ("-c, --config FILE", "a YAML config; repeat to compose them (trainer, method or task, overlays; the later wins)"),
        ("--data.store STORE", "the store written by medssl ingest"),
        *specific,
        ("--trainer.max_steps N", "optimizer steps to train: the length of the run"),
        ("--trainer.devices N", "GPUs (or CPU processes) to train on; -1: every GPU"),
        ("--trainer.default_root_dir RUNS", "where run folders go: RUNS/<model>/<run_name>/ (default: runs)"),
        ("--run_name NAME", "the run folder's name (default: the next version_N)"),
        ("--ckpt_path FILE", "resume from this checkpoint, e.g. RUNS/<model>/NAME/checkpoints/last.ckpt"),
        ("--resume", "continue the run in RUNS/<model>/<run_name> from its last checkpoint (a folder that holds a run is otherwise refused)"),
        ("--tracking NAME", "csv (default): metrics.csv only; tensorboard or mlflow: that logger too"),
        ("--auto-fit", "if the estimated peak memory exceeds what the machine has, fit crop, batch and activation checkpointing to it (else the run stops before it allocates); --memory-budget GB sets the budget"),
        ("--print_config", "print the whole configuration this run would use, and exit"),
    ]
    width = max(len(flag) for flag, _ in options) + 4
    lines = [f"usage: medssl {command} -c CONFIG [-c CONFIG ...] --data.store STORE [OPTIONS]", "", *example.splitlines(), "", "main options:"]
    for flag, text in options:
        wrapped = textwrap.wrap(text, 100 - width)
        lines += [f"  {flag:<{width - 2}}{wrapped[0]}", *(" " * width + rest for rest in wrapped[1:])]
    lines += ["", "checkpoints (in RUNS/<model>/NAME/checkpoints/):", *textwrap.wrap(checkpoints, 98, initial_indent="  ", subsequent_indent="  ")]
    lines += [
        "",
        "every option (each argument of the trainer, model and data classes is a flag):",
        f"  medssl {command} --help-all    the full list (LightningCLI; takes a few seconds)",
        f"  medssl {command} --model.help {model_class}",
        "      the arguments of one model class (likewise --data.help CLASS)",
    ]
    return "\n".join(lines)


PRETRAIN_HELP = _training_help(
    "pretrain",
    "Self-supervised pretraining of an encoder on a store, e.g.\n"
    "  medssl pretrain -c configs/trainer/cpu.yaml -c configs/pretrain/voco.yaml \\\n"
    "      -c configs/pretrain/smoke.yaml --data.store STORE --trainer.max_steps 20 --run_name try1",
    [("--probe.path FILE", "a probe set (medssl probe-set): kNN and linear probes of the backbone as it trains")],
    "last.ckpt, and step=N.ckpt every --checkpoint.every_n_train_steps N steps (default 1000), all kept.",
    "medssl.methods.VoCo",
)
FINETUNE_HELP = _training_help(
    "finetune",
    "Fine-tune segmentation, detection or diagnosis heads on an encoder, e.g.\n"
    "  medssl finetune -c configs/trainer/cpu.yaml -c configs/finetune/segmentation.yaml \\\n"
    "      --model.encoder ARTIFACT --data.store STORE --trainer.max_steps 200 --run_name seg1",
    [("--model.encoder ARTIFACT", "the pretrained encoder (medssl export); leave it out to train from scratch")],
    "last.ckpt, and the --checkpoint.save_top_k K (default 3) best by the task's validation metric (val/dice, "
    "val/froc_cpm, val/auroc), validated every --trainer.val_check_interval N batches (default 1000).",
    "medssl.tasks.segmentation.Segmentation",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medssl", description="medssl: hospital imaging in, de-identified canonical volumes and models out.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _ingest_parser(sub)
    _passthrough_parser(sub, "pretrain", "self-supervised pretraining (LightningCLI: -c configs/pretrain/voco.yaml --data.store STORE ...)", "medssl.methods.cli:pretrain_main", PRETRAIN_HELP)
    _passthrough_parser(sub, "export", "checkpoint -> artifact (model.safetensors + artifact.json): CHECKPOINT --out DIR", "medssl.export.cli:export_main")
    _passthrough_parser(sub, "finetune", "fine-tune segmentation/detection/diagnosis heads (LightningCLI: -c configs/finetune/segmentation.yaml --model.encoder ARTIFACT --data.store STORE ...)", "medssl.tasks.cli:finetune_main", FINETUNE_HELP)
    _passthrough_parser(sub, "bench", "experiments across runs: label-efficiency --store STORE --out DIR --encoder NAME=ARTIFACT ...", "medssl.bench.cli:bench_main")
    _passthrough_parser(sub, "predict", "artifact + DICOM/NIfTI/NRRD -> NIfTI, DICOM SEG/SR, JSON, PNG: --model ARTIFACT --input PATH --out DIR", "medssl.inference.predict_cli:predict_main")
    _passthrough_parser(sub, "serve", "HTTP inference service: --model ARTIFACT [--host 127.0.0.1] [--port 8000]", "medssl.inference.server.cli:serve_main")
    _passthrough_parser(sub, "router", "watch Orthanc for new stable series, run medssl-serve, store DICOM SEG/SR back (--state-file ...)", "medssl.inference.router_cli:router_main")
    _probe_set_parser(sub)
    _pipeline_parser(sub)
    return parser


COMPUTE_COMMANDS = frozenset({"pretrain", "finetune", "bench", "predict", "serve", "probe-set"})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("lightning").propagate = False  # Lightning prints through its own handler
    try:
        if args.command in COMPUTE_COMMANDS and not {"-h", "--help"} & set(getattr(args, "args", None) or []):
            from medssl.threads import configure_threads

            configure_threads()  # the CPU share other work leaves (medssl/threads.py)
        return args.func(args)
    except MedsslError as err:
        print(f"medssl {args.command}: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"medssl {args.command}: {err.strerror or 'not found'}: {err.filename or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medssl {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
