"""The ``genpromp`` command line.

Each sub-command lives in the module that implements it: the module defines
``register_cli(subparsers)``, which adds its parser and sets ``func`` to a callable taking the
parsed arguments. Run ``genpromp <command> --help`` for a command's options.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import GenprompError

__all__ = ["main", "COMMAND_MODULES"]

# Modules that contribute sub-commands, in the order of the pipeline.
COMMAND_MODULES = (
    "genpromp.assets",
    "genpromp.data.synth",
    "genpromp.data.indexing",
    "genpromp.data.scores",
    "genpromp.data.classifier",
    "genpromp.models.tiny",
    "genpromp.models.pretrain",
    "genpromp.training.stage1",
    "genpromp.training.stage2",
    "genpromp.training.checkpoints",
    "genpromp.cams.extract",
    "genpromp.evaluation.evaluate",
    "genpromp.evaluation.tables",
)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="genpromp",
        description="GenPromp for weakly supervised object localization: index datasets, import "
                    "classifier scores, train concept tokens and the UNet, extract cross-attention "
                    "CAMs and score them. The Snakemake workflow calls the same functions; see README.md.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register_cli(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
