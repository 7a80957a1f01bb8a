"""The `mobilevitv2` dispatcher: one subcommand per module of this package, in one table.

A subcommand is a module here (`info.py`, `convert.py`, ...) that defines `add_arguments(parser)`
and `run(args) -> int`, and one entry in `SUBCOMMANDS`. The module is imported only when that
subcommand runs, so `mobilevitv2 --help` stays fast and needs neither torch nor the training code
(nor TensorFlow: `mobilevitv2 COMMAND --help` must not import it either). The library functions a
subcommand calls live in the packages (`conversion`, `training`, `keras_mobilevitv2.export`),
which hold no argparse.

Quiet by default: TensorFlow's C++ start-up lines are captured (`keras_mobilevitv2.logs`);
`--verbose` shows them, and the traceback of an error. Errors are one `error: ...` line: a missing
optional dependency or a failed download exits 2, an unexpected exception 1.
"""

import argparse
import importlib
import sys

from keras_mobilevitv2 import __version__
from keras_mobilevitv2.cli.common import EXIT_USER_ERROR
from keras_mobilevitv2.extras import MissingExtraError, NetworkError

EXIT_UNEXPECTED = 1
EXIT_INTERRUPTED = 130
# What the user can fix without reading a traceback: a missing extra, the network, a missing file.
USER_ERRORS = (MissingExtraError, NetworkError, FileNotFoundError, FileExistsError, IsADirectoryError, PermissionError)

# name -> (module, one-line help). Each module is imported only when its subcommand runs.
SUBCOMMANDS = {
    "info": ("keras_mobilevitv2.cli.info", "list the presets, or show a model's config and parameter count"),
    "convert": ("keras_mobilevitv2.cli.convert", "convert a PyTorch checkpoint to a Keras model (or a .keras model to transformers)"),
    "export": ("keras_mobilevitv2.cli.export", "export a .keras model as a SavedModel, a TF Serving bundle or TFLite"),
    "predict": ("keras_mobilevitv2.cli.predict", "classify or segment images (files, folders, globs) with any checkpoint"),
    "predict-batch": ("keras_mobilevitv2.cli.predict_batch", "batch inference on Apache Beam (any runner) over image or TFRecord globs"),
    "train": ("keras_mobilevitv2.cli.train", "train a classifier or a segmenter from a recipe (resumable, multi-worker)"),
    "evaluate": ("keras_mobilevitv2.cli.evaluate", "top-1/top-5 on an ImageNet-style folder or mIoU on PASCAL VOC"),
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="mobilevitv2",
        description=(
            "MobileViTV2 in Keras 3: convert PyTorch checkpoints, predict, export for serving, "
            "train and evaluate. Run `mobilevitv2 COMMAND --help` for a command's options."
        ),
    )
    parser.add_argument("--version", action="version", version=f"mobilevitv2 (keras-mobilevitv2) {__version__}")
    verbose_help = "show TensorFlow's log lines and the traceback of an error"
    parser.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        # "resolve": a subcommand module may define its own --verbose without an argparse conflict.
        sub = subparsers.add_parser(name, help=help_text, description=help_text, conflict_handler="resolve")
        # Also after the command (`mobilevitv2 predict ... --verbose`); SUPPRESS keeps a global -v.
        sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
        sub.set_defaults(_module=module_name)
        # Options are added lazily: argparse needs them only when this subcommand is parsed.
        sub.set_defaults(_needs_arguments=True)
    return parser


def _needs_tensorflow(args):
    """Every command but the preset listing of `info` runs TensorFlow."""
    return not (args.command == "info" and args.target is None)


def _error(message):
    print(f"error: {message}", file=sys.stderr)


def parse_args(argv):
    """(parser, args): `argv` parsed with the options of the subcommand it names (only that module is imported)."""
    parser = build_parser()
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[command][0])
        module.add_arguments(parser._subparsers._group_actions[0].choices[command])
    return parser, parser.parse_args(argv)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, args = parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    verbose = args.verbose
    try:
        if _needs_tensorflow(args):
            from keras_mobilevitv2.logs import import_tensorflow

            import_tensorflow(verbose=verbose)
        module = importlib.import_module(args._module)
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except USER_ERRORS as err:
        if verbose:
            raise
        _error(str(err) if not isinstance(err, OSError) or not err.filename else f"{err.strerror}: {err.filename}")
        return EXIT_USER_ERROR
    except Exception as err:  # noqa: BLE001 - one line for the user; the traceback behind --verbose
        if verbose:
            raise
        reason = " ".join(str(err).split()) or "(no message)"
        _error(f"{type(err).__name__}: {reason} (run with --verbose for the traceback)")
        return EXIT_UNEXPECTED

