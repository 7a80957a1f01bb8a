"""`mobilevitv2 export`: a saved `.keras` model as a SavedModel, a TF Serving bundle or TFLite.

    mobilevitv2 export model.keras --format savedmodel --out exported/model
    mobilevitv2 export model.keras --format serving --out /srv/models [--name NAME] [--version N]
    mobilevitv2 export model.keras --format tflite --out exported [--quantization float16]
"""

import os
import re
import sys

FORMATS = ("savedmodel", "serving", "tflite")
QUANTIZATIONS = ("float16", "dynamic_int8")


def add_arguments(parser):
    parser.add_argument("model", metavar="MODEL", help="a .keras model file (a MobileViTV2 classifier or segmenter)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="savedmodel: the SavedModel directory; serving: the base directory holding models.config; "
        "tflite: a directory (or a path ending in .tflite)",
    )
    parser.add_argument("--name", help="serving: the model name (default: from the model, e.g. mobilevitv2-1.0-imagenet)")
    parser.add_argument(
        "--version",
        type=_positive_int,
        help="serving: the version, a positive integer (default: the largest existing + 1; a concurrent "
        "export takes the next one)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version / SavedModel / file")
    parser.add_argument(
        "--server-base-dir",
        metavar="DIR",
        help="serving: --out as the server sees it (e.g. /models in a container), for models.config",
    )
    parser.add_argument(
        "--keep-variables",
        action="store_true",
        help="savedmodel, serving: store the model's variables instead of the BatchNorm-folded graph "
        "with constant weights (the default, ~15%% faster at batch 1; same outputs to float32 rounding)",
    )
    parser.add_argument(
        "--max-image-pixels", type=int, metavar="N",
        help="savedmodel, serving: serving_default refuses images whose header claims more than N pixels "
        "(default: keras_mobilevitv2.preprocessing.MAX_IMAGE_PIXELS, 50 megapixels)",
    )
    parser.add_argument("--top-k", type=int, default=5, help="savedmodel, serving: classes in the top_k outputs")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, help="tflite: weight quantization (default float32)")
    parser.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("HEIGHT", "WIDTH"),
        help="tflite: the fixed input size (default: the preprocessing's crop size)",
    )


def _positive_int(text):
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, received {text!r}")
    return value


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    return 2


def load_model(path):
    """`keras.saving.load_model` of a `.keras` file, after registering this package's classes.

    Raises `FileNotFoundError` / `ValueError` with the path in the message.
    """
    from keras_mobilevitv2.saving import load_model as load

    return load(path)


def _model_name(path):
    """A served model name from the model, `mobilevitv2-<width>-<imagenet|classifier|deeplabv3>`, read
    from the `.keras` file's config; the file name (`my model.keras` -> `my-model`) if unreadable."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            spec = json.loads(archive.read("config.json"))
        config, task = spec["config"]["config"], spec["class_name"]
        kind = {"MobileViTV2SemanticSegmenter": "deeplabv3", "MobileViTV2Backbone": "backbone"}.get(
            task, "imagenet" if len(config["id2label"]) == 1000 else "classifier"
        )
        width = float(config["width_multiplier"])
        return f"mobilevitv2-{width:.1f}-{kind}" if width * 10 == int(width * 10) else f"mobilevitv2-{width:g}-{kind}"
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile):
        stem = os.path.splitext(os.path.basename(path))[0]
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.") or "model"


def _tflite_path(out, model_path, quantization):
    """`out` itself when it names a .tflite file, else `out/<the model file's stem>[-quantization].tflite`."""
    if out.endswith(".tflite"):
        return out
    suffix = f"-{quantization}" if quantization else ""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", os.path.splitext(os.path.basename(model_path))[0]).strip("-.") or "model"
    return os.path.join(out, f"{stem}{suffix}.tflite")


def run(args):
    if args.quantization and args.format != "tflite":
        return fail("--quantization applies to --format tflite only")
    if args.input_size and args.format != "tflite":
        return fail("--input-size applies to --format tflite only")
    if (args.name or args.version is not None or args.server_base_dir) and args.format != "serving":
        return fail("--name, --version and --server-base-dir apply to --format serving only")
    if args.input_size and min(args.input_size) < 1:
        return fail(f"--input-size must be two positive integers, received {args.input_size}")
    if args.keep_variables and args.format == "tflite":
        return fail("--keep-variables applies to --format savedmodel and serving only")
    if args.top_k < 1:
        return fail(f"--top-k must be a positive integer, received {args.top_k}")
    if args.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.name):
        return fail(f"--name must be letters, digits, '_', '.', '-' (no path separators), received {args.name!r}")
    if os.path.exists(args.out) and not os.path.isdir(args.out) and not args.out.endswith(".tflite"):
        return fail(f"--out {args.out} exists and is not a directory")
    if args.format == "savedmodel" and os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        return fail(f"{args.out} exists and is not empty; pass --overwrite to write into it")
    tflite_path = _tflite_path(args.out, args.model, args.quantization) if args.format == "tflite" else None
    if tflite_path and os.path.exists(tflite_path) and not args.overwrite:
        return fail(f"{tflite_path} exists; pass --overwrite to replace it")

    try:
        print(f"loading {args.model}", flush=True)
        model = load_model(args.model)
    except (FileNotFoundError, ValueError) as err:
        return fail(str(err))
    from keras_mobilevitv2 import export

    try:
        task = export.model_task(model)
    except TypeError as err:
        return fail(f"{args.model}: {err}")
    print(f"{type(model).__name__} ({task}, {model.config.num_labels} labels)", flush=True)

    if args.max_image_pixels is not None and args.max_image_pixels < 1:
        return fail(f"--max-image-pixels must be a positive integer, received {args.max_image_pixels}")
    limit = {} if args.max_image_pixels is None else {"max_image_pixels": args.max_image_pixels}
    if args.format == "savedmodel":
        path = export.export_saved_model(
            model, args.out, top_k=args.top_k, fold_batchnorm=not args.keep_variables, **limit
        )
        print(f"wrote SavedModel {path} (signatures serving_default(image_bytes), predict_pixels(pixel_values))")
    elif args.format == "serving":
        name = args.name or _model_name(args.model)
        try:
            path = export.export_serving_bundle(
                model, args.out, name, version=args.version, overwrite=args.overwrite,
                server_base_dir=args.server_base_dir, fold_batchnorm=not args.keep_variables, **limit,
            )
        except (FileExistsError, ValueError) as err:
            return fail(str(err))
        print(f"wrote {path}")
        config_file = os.path.join(os.path.abspath(args.out), export.MODELS_CONFIG)
        print(f"serve with: tensorflow_model_server --model_config_file={config_file} (model {name!r})")
    else:
        if args.input_size:
            input_size = tuple(args.input_size)
        else:
            input_size = export.tflite_input_size(model)
        print(f"converting to TFLite, input (1, {input_size[0]}, {input_size[1]}, 3)", flush=True)
        from keras_mobilevitv2.logs import captured_stderr

        log = None
        try:  # the converter's own lines (MLIR passes, op statistics): shown with --verbose or on failure
            with captured_stderr(enabled=not getattr(args, "verbose", False)) as log:
                path = export.export_tflite(
                    model, tflite_path, quantization=args.quantization, input_size=input_size, overwrite=args.overwrite
                )
        except Exception:
            sys.stderr.write(log.text if log else "")
            raise
        print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB, {args.quantization or 'float32'})")
        if log.lines:
            print(f"(the TFLite converter's {len(log.lines)} log lines are hidden; --verbose shows them)")
    return 0
