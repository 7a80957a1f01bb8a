"""`mobilevitv2 convert`: a PyTorch checkpoint -> a Keras model directory, or back to transformers.

    mobilevitv2 convert mobilevitv2-1.0.pt --out converted/          # ml-cvnets, timm or HF source
    mobilevitv2 convert apple-hf-dir/ --out converted/ --compat transformers
    mobilevitv2 convert --to transformers converted/model.keras --out hf-export/

To Keras, writes `DIR/model.keras` (architecture, labels, preprocessing, weights) and
`DIR/model.weights.h5`, and - when torch and transformers are installed - checks the Keras model
against the source run in PyTorch and writes `DIR/conversion_report.json` (`conversion.report`).
To transformers, writes what `save_pretrained` writes (`conversion.to_transformers`) and checks the
export loaded by stock transformers against the Keras model.

Exit status: 0 done and checked (or `--no-parity-check`); 1 files written but Keras and PyTorch
disagree (a compat="cvnets" model at output stride 8 / 16 exported to transformers included: stock
transformers does not dilate its local convs, so it computes something else); 2 bad input
(missing, corrupt or non-MobileViTV2 file, a config that does not fit), with one line on stderr;
3 files written but the parity check could not run (torch or transformers not installed).
"""

import contextlib
import json
import os
import sys
import time
import warnings

from keras_mobilevitv2.tasks import TASK_NAMES

KERAS_FILE = "model.keras"
WEIGHTS_FILE = "model.weights.h5"
REPORT_FILE = "conversion_report.json"
EXIT_PARITY_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_PARITY_SKIPPED = 3


class _BadInput(Exception):
    """A user error: reported as one line, exit status 2."""


def add_arguments(parser):
    parser.add_argument(
        "src",
        metavar="SRC",
        help="checkpoint to convert: Hugging Face model directory or .safetensors/.bin, ml-cvnets .pt/.pth, "
        "timm file; with --to transformers, a .keras model",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    parser.add_argument(
        "--to",
        choices=("keras", "transformers"),
        default="keras",
        help="keras (default): PyTorch checkpoint -> Keras; transformers: .keras model -> transformers directory",
    )
    parser.add_argument("--task", choices=TASK_NAMES, help="model to build (default: the checkpoint's head)")
    parser.add_argument(
        "--compat",
        choices=("cvnets", "transformers"),
        help="whose architecture to reproduce where they differ (default: the config's, else cvnets)",
    )
    parser.add_argument("--config", metavar="CONFIG_JSON", help="a config.json that wins over the checkpoint's own")
    parser.add_argument("--prefer-ema", action="store_true", help="take the EMA weights of a training checkpoint")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files of an earlier conversion in --out (otherwise an existing model.keras, or a "
        "transformers checkpoint's config.json / model.safetensors, is an error)",
    )
    parser.add_argument(
        "--no-parity-check",
        "--no-report",
        dest="no_report",
        action="store_true",
        help="skip the PyTorch parity check (exit 0 without it; otherwise a check that fails or cannot run "
        "is a non-zero exit status)",
    )


@contextlib.contextmanager
def _step(message):
    """Print `message ...`, then `done in N s`: progress for the slow steps."""
    start = time.perf_counter()
    print(f"[convert] {message} ...", flush=True)
    yield
    print(f"[convert]   done in {time.perf_counter() - start:.1f} s", flush=True)


def _prepare_out(out, outputs, overwrite):
    """Create `out`; refuse (before any work) to replace any of the files `outputs` in it."""
    from keras_mobilevitv2.outputs import check_can_write

    if os.path.exists(out) and not os.path.isdir(out):
        raise _BadInput(f"--out {out} exists and is not a directory")
    check_can_write([os.path.join(out, name) for name in outputs], overwrite, hint="pass --overwrite to replace it")
    os.makedirs(out, exist_ok=True)


def _write_report(report, out, expected_to_differ=False):
    """Print and save the report; the exit status: 1 when Keras and PyTorch disagree unexpectedly."""
    from conversion.report import format_report

    print(format_report(report))
    path = os.path.join(out, REPORT_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(f"[convert] wrote {path}")
    if report["passed"]:
        return 0
    why = " (expected: see the warnings above)" if expected_to_differ else ""
    print(
        f"mobilevitv2 convert: the Keras model and the PyTorch reference disagree{why} (worst "
        f"{report['max_abs_diff_over_std']:.2e} of std); the files were written, see {path}; "
        "--no-parity-check skips the check",
        file=sys.stderr,
    )
    return EXIT_PARITY_FAILED


def _parity_skipped():
    """The check cannot run on this install: say so, and make the exit status say so."""
    from keras_mobilevitv2.extras import install_hint

    print(
        "mobilevitv2 convert: the files were written, but the PyTorch parity check was skipped: it needs "
        f"torch and transformers ({install_hint('parity')}); pass --no-parity-check to convert without it",
        file=sys.stderr,
    )
    return EXIT_PARITY_SKIPPED


def _to_keras(args):
    from conversion.convert import convert_checkpoint
    from conversion.hf import BACKBONE_PREFIX
    from conversion.sources import load_as_hf
    from keras_mobilevitv2.tasks import task_of

    if not os.path.exists(args.src):
        raise _BadInput(f"checkpoint {args.src} does not exist")
    if args.config is not None and not os.path.isfile(args.config):
        raise _BadInput(f"--config {args.config} does not exist")
    _prepare_out(args.out, [KERAS_FILE, WEIGHTS_FILE], args.overwrite)
    with _step(f"converting {args.src}"):
        model = convert_checkpoint(
            args.src, config=args.config, compat=args.compat, task=args.task, prefer_ema=args.prefer_ema
        )
    config = model.config
    print(
        f"[convert] {model.source_format} checkpoint -> {type(model).__name__}: width {config.width_multiplier}, "
        f"{config.num_labels} labels, output_stride {config.output_stride}, compat {config.compat}, "
        f"preprocessing: {model.conversion_summary['preprocessing_origin'] or 'none'}"
    )
    keras_path = os.path.join(args.out, KERAS_FILE)
    with _step(f"saving {keras_path} and {WEIGHTS_FILE}"):
        from keras_mobilevitv2.outputs import atomic_file

        # Each written beside its name and renamed into place: a crash leaves the old file or none.
        with atomic_file(keras_path) as tmp:
            model.save(tmp)
        with atomic_file(os.path.join(args.out, WEIGHTS_FILE)) as tmp:
            model.save_weights(tmp)

    if args.no_report:
        return 0
    from conversion.report import available, parity_report

    if not available():
        return _parity_skipped()
    with _step("parity report: running the source in PyTorch (transformers) and the Keras model"):
        # Read again rather than kept from the conversion: two copies of the weights at most.
        hf_state_dict, _, _, _, _ = load_as_hf(args.src, config=config, prefer_ema=args.prefer_ema)
        if task_of(model) == "backbone":  # also when --task backbone took it out of a full checkpoint
            hf_state_dict = {k: v for k, v in hf_state_dict.items() if k.startswith(BACKBONE_PREFIX)}
        report = parity_report(model, hf_state_dict, source=args.src, source_format=model.source_format)
        report["conversion_notes"] = list(model.conversion_notes)
        report["conversion"] = model.conversion_summary  # source, task, preprocessing and its origin, unknown fields
    return _write_report(report, args.out)


def _to_transformers(args):
    if args.task or args.compat or args.config or args.prefer_ema:
        raise _BadInput("--task, --compat, --config and --prefer-ema apply to PyTorch checkpoints, not to --to transformers")
    if not os.path.isfile(args.src):
        raise _BadInput(f"Keras model {args.src} does not exist")
    if not args.src.endswith(".keras"):
        raise _BadInput(f"--to transformers takes a .keras model file, received {args.src}")
    from conversion.to_transformers import OUTPUT_FILES, export_notes, export_to_transformers
    from keras_mobilevitv2.tasks import task_of

    _prepare_out(args.out, OUTPUT_FILES, args.overwrite)

    from keras_mobilevitv2.saving import load_model

    with _step(f"loading {args.src}"):
        try:
            model = load_model(args.src)
        except (ValueError, OSError, TypeError) as e:
            raise _BadInput(f"{args.src} is not a readable .keras model: {e}") from None
    try:
        task_of(model)
    except ValueError as e:
        raise _BadInput(f"{args.src}: {e}") from None
    notes = export_notes(model.config)
    with _step(f"writing transformers files to {args.out}"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the notes are printed below, once
        export_to_transformers(model, args.out, overwrite=args.overwrite)
    for note in notes:
        print(f"[convert] warning: {note}")
    if args.no_report:
        return 0
    from conversion.report import available, parity_report

    if not available():
        return _parity_skipped()
    with _step("parity report: the export in stock transformers vs the Keras model"):
        report = parity_report(model, reference_dir=args.out, source=args.src, source_format="keras")
    return _write_report(report, args.out, expected_to_differ=bool(notes))


def run(args):
    from conversion.hf import ConversionError
    from conversion.sources import CheckpointError

    try:
        if args.to == "transformers":
            return _to_transformers(args)
        return _to_keras(args)
    # CheckpointError and ConversionError are ValueErrors; so are an invalid --config (every field is
    # validated) and a --task the checkpoint cannot give.
    except (_BadInput, CheckpointError, ConversionError, ValueError, FileExistsError) as e:
        print(f"mobilevitv2 convert: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
