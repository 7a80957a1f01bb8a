"""`mobilevitv2 export`: a saved `.keras` model as a SavedModel, a TF Serving bundle or TFLite.

    mobilevitv2 export model.keras --format savedmodel --out exported/model
    mobilevitv2 export model.keras --format serving --out /srv/models [--name NAME] [--version N] [--label canary]
    mobilevitv2 export --promote --out /srv/models --name NAME     # stable -> the canary version
    mobilevitv2 export model.keras --format tflite --out exported [--quantization float16]
    mobilevitv2 export model.keras --format tflite --out exported --quantization int8 [--int8-io] [--representative-images DIR]
    mobilevitv2 export model.keras --format onnx --out exported        # exported/model.onnx, preprocessor_config.json
"""

import os
import re
import sys

FORMATS = ("savedmodel", "serving", "tflite", "onnx")
QUANTIZATIONS = ("float16", "dynamic_int8", "int8")
LABELS = ("stable", "canary")  # export.VERSION_LABELS (not imported: --help stays TensorFlow-free)


def add_arguments(parser):
    parser.add_argument(
        "model", metavar="MODEL", nargs="?",
        help="a .keras model file (a MobileViTV2 classifier or segmenter); not with --promote / --drop-canary",
    )
    parser.add_argument("--format", choices=FORMATS, help="what to write (required unless --promote / --drop-canary)")
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="savedmodel: the SavedModel directory; serving: the base directory holding models.config; "
        "tflite, onnx: a directory (or a path ending in .tflite / .onnx)",
    )
    parser.add_argument("--name", help="serving: the model name (default: from the model, e.g. mobilevitv2-1.0-imagenet)")
    parser.add_argument(
        "--version",
        type=_positive_int,
        help="serving: the version, a positive integer (default: the largest existing + 1; a concurrent "
        "export takes the next one)",
    )
    parser.add_argument(
        "--label", choices=LABELS,
        help="serving: the version label of the new version (default: stable for the model's first version, "
        "canary after; a label in use is never moved to a new version)",
    )
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument(
        "--promote", action="store_true",
        help="serving: in --out's models.config, move the stable label of --name to its canary version "
        "(once the server has loaded it); the old stable version is unloaded",
    )
    labels.add_argument(
        "--drop-canary", action="store_true",
        help="serving: remove the canary label of --name (its version is unloaded)",
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
        help="savedmodel, serving: store the model's variables instead of the fused graph "
        "with constant weights (the default, ~15%% faster at batch 1; same outputs to float32 rounding)",
    )
    parser.add_argument(
        "--max-image-pixels", type=int, metavar="N",
        help="savedmodel, serving: serving_default refuses images whose header claims more than N pixels "
        "(default: keras_mobilevitv2.preprocessing.MAX_IMAGE_PIXELS, 50 megapixels)",
    )
    parser.add_argument("--top-k", type=int, default=5, help="savedmodel, serving: classes in the top_k outputs")
    parser.add_argument(
        "--quantization", choices=QUANTIZATIONS,
        help="tflite: float16 / dynamic_int8 weights, or int8 (full integer, calibrated on real photos); default float32",
    )
    parser.add_argument(
        "--representative-images", metavar="DIR",
        help="tflite int8: calibrate on the images of DIR (default: the sample photos of scikit-image and matplotlib)",
    )
    parser.add_argument("--int8-io", action="store_true", help="tflite int8: int8 input and output tensors (default float32)")
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


def _edit_labels(args):
    """--promote / --drop-canary: change the labels of --name in --out/models.config."""
    if args.model or args.format not in (None, "serving"):
        return fail("--promote and --drop-canary take no MODEL and no --format but serving (they change models.config)")
    if not args.name:
        return fail("--promote and --drop-canary need --name, the served model")
    from keras_mobilevitv2 import export

    if not os.path.isfile(os.path.join(args.out, export.MODELS_CONFIG)):
        return fail(f"no {export.MODELS_CONFIG} in --out {args.out}")
    try:
        labels = (export.promote_canary if args.promote else export.drop_canary)(args.out, args.name)
    except ValueError as err:  # VersionLabelError, or a models.config that is not one
        return fail(str(err))
    shown = ", ".join(f"{label} -> {version}" for label, version in sorted(labels.items())) or "none"
    print(f"{args.name}: labels {shown} in {os.path.join(args.out, export.MODELS_CONFIG)}")
    return 0


def run(args):
    if args.promote or args.drop_canary:
        return _edit_labels(args)
    if args.model is None or args.format is None:
        return fail("export needs MODEL and --format (or --promote / --drop-canary with --out and --name)")
    if args.label and args.format != "serving":
        return fail("--label applies to --format serving only")
    if args.quantization and args.format != "tflite":
        return fail("--quantization applies to --format tflite only")
    if (args.representative_images or args.int8_io) and args.quantization != "int8":
        return fail("--representative-images and --int8-io apply to --quantization int8 only")
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
    if args.format == "onnx" and (args.max_image_pixels is not None or args.keep_variables):
        return fail("--max-image-pixels and --keep-variables apply to --format savedmodel and serving only")
    if os.path.exists(args.out) and not os.path.isdir(args.out) and not args.out.endswith((".tflite", ".onnx")):
        return fail(f"--out {args.out} exists and is not a directory")
    if args.format == "savedmodel" and os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        return fail(f"{args.out} exists and is not empty; pass --overwrite to write into it")
    tflite_path = _tflite_path(args.out, args.model, args.quantization) if args.format == "tflite" else None
    if tflite_path and os.path.exists(tflite_path) and not args.overwrite:
        return fail(f"{tflite_path} exists; pass --overwrite to replace it")
    if args.format == "onnx":
        return run_onnx(args)

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
                server_base_dir=args.server_base_dir, fold_batchnorm=not args.keep_variables, label=args.label,
                **limit,
            )
        except (FileExistsError, ValueError) as err:
            return fail(str(err))
        labels = export.version_labels(args.out, name)
        version = int(os.path.basename(path))
        tags = ", ".join(label for label, v in sorted(labels.items()) if v == version) or "no label"
        print(f"wrote {path} ({tags})")
        base = os.path.abspath(args.out)
        print(
            f"serve with: tensorflow_model_server --model_config_file={base}/{export.MODELS_CONFIG} "
            f"--enable_batching --batching_parameters_file={base}/{export.BATCHING_PARAMETERS} "
            f"--monitoring_config_file={base}/{export.MONITORING_CONFIG} --allow_version_labels_for_unavailable_models "
            f"(model {name!r}; README, Export and serving)"
        )
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
                if args.quantization == "int8":
                    report = export.export_tflite_int8(
                        model, tflite_path, input_size=input_size, overwrite=args.overwrite,
                        representative_images=args.representative_images, int8_io=args.int8_io,
                    )
                    path = report["path"]
                else:
                    path = export.export_tflite(
                        model, tflite_path, quantization=args.quantization, input_size=input_size,
                        overwrite=args.overwrite,
                    )
        except export.RepresentativeImageError as err:
            return fail(str(err))
        except Exception:
            sys.stderr.write(log.text if log else "")
            raise
        print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB, {args.quantization or 'float32'})")
        if args.quantization == "int8":
            print_int8_report(report, export.tflite_report_path(path))
        if log.lines:
            print(f"(the TFLite converter's {len(log.lines)} log lines are hidden; --verbose shows them)")
    return 0


def print_int8_report(report, report_path):
    """The int8-vs-float32 agreement of `export_tflite_int8`, in a few lines."""
    n = report["images"]
    if "top1_agreement" in report:
        agreement = f"top-1 agreement {report['top1_agreement']:.0%} on {n} images"
    else:
        agreement = f"label-map pixel agreement {report['pixel_agreement']:.1%} on {n} images"
    error = f"max logit error {report['max_logit_error']:.3g} ({report['max_logit_error_over_std']:.3g} of std)"
    print(f"int8 vs float32: {agreement}, {error}")
    for name in ("input", "output"):
        q = report[name]
        params = f", scale {q['scale']:.6g}, zero point {q['zero_point']}" if q["scale"] else ""
        print(f"  {name}: {q['dtype']}{params}")
    print(f"  report: {report_path}")


def run_onnx(args):
    """`--format onnx`: `onnx_export.export_onnx` to `--out` (a directory, or a path ending in .onnx)."""
    from keras_mobilevitv2.extras import require

    require("tf2onnx", "--format onnx needs tf2onnx", "onnx")  # before loading the model
    if args.out.endswith(".onnx"):
        path = args.out
    else:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", os.path.splitext(os.path.basename(args.model))[0]).strip("-.")
        path = os.path.join(args.out, f"{stem or 'model'}.onnx")
    if os.path.exists(path) and not args.overwrite:
        return fail(f"{path} exists; pass --overwrite to replace it")
    try:
        print(f"loading {args.model}", flush=True)
        model = load_model(args.model)
    except (FileNotFoundError, ValueError) as err:
        return fail(str(err))
    from keras_mobilevitv2 import onnx_export
    from keras_mobilevitv2.logs import captured_stderr

    log = None
    try:  # tf2onnx's own lines: shown with --verbose or on failure
        with captured_stderr(enabled=not getattr(args, "verbose", False)) as log:
            onnx_export.export_onnx(model, path, overwrite=args.overwrite)
    except (TypeError, FileExistsError) as err:
        return fail(f"{args.model}: {err}" if isinstance(err, TypeError) else str(err))
    except Exception:
        sys.stderr.write(log.text if log else "")
        raise
    names = ", ".join(onnx_export.onnx_output_names(model))
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB; input pixel_values (batch, height, width, 3), outputs {names})")
    print(f"preprocessing: {os.path.join(os.path.dirname(os.path.abspath(path)), onnx_export.PREPROCESSOR_FILE)}")
    return 0
