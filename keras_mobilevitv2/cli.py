"""The `mobilevitv2` command line: one subcommand per job, each in the module that owns it.

A subcommand module defines `add_arguments(parser)` and `run(args) -> int`; it is imported only
when that subcommand runs, so `mobilevitv2 --help` stays fast and needs neither torch nor the
training code.
"""

import argparse
import importlib
import sys

# name -> (module, one-line help). Each module is imported only when its subcommand runs.
SUBCOMMANDS = {
    "info": ("keras_mobilevitv2.info_cli", "list the presets, or show a model's config and parameter count"),
    "convert": ("conversion.cli", "convert a PyTorch checkpoint to a Keras model (or a .keras model to transformers)"),
    "export": ("keras_mobilevitv2.export_cli", "export a .keras model as a SavedModel, a TF Serving bundle or TFLite"),
    "predict": ("keras_mobilevitv2.predict_cli", "classify or segment image files with a .keras model"),
    "train": ("training.cli", "train a classifier or a segmenter from a recipe (resumable, multi-worker)"),
    "evaluate": ("training.evaluate", "top-1/top-5 on an ImageNet-style folder or mIoU on PASCAL VOC"),
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="mobilevitv2",
        description=(
            "MobileViTV2 in Keras 3: convert PyTorch checkpoints, predict, export for serving, "
            "train and evaluate. Run `mobilevitv2 COMMAND --help` for a command's options."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        # Options are added lazily: argparse needs them only when this subcommand is parsed.
        sub.set_defaults(_needs_arguments=True)
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Import only the chosen subcommand's module, then re-parse with its arguments.
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[command][0])
        module.add_arguments(parser._subparsers._group_actions[0].choices[command])
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(args._module)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
