"""`mobilevitv2 predict`: run a model on images; print the results and write them to `--out`.

    mobilevitv2 predict sample:cat --model converted/model.keras          # a photo that ships with scikit-image
    mobilevitv2 predict photos/ 'more/*.jpg' cat.png --model ckpt.pt --top-k 3
    mobilevitv2 predict street.jpg --model segmenter.keras --out masks/ [--alpha 0.5] [--overwrite]

IMAGE is a file, a directory (every JPEG / PNG / BMP / GIF under it), a glob, or `sample:NAME`.
`--model` is anything `from_pretrained` reads: a `.keras` file, a Hugging Face directory or hub
id, an ml-cvnets `.pt`, a timm or HF `.safetensors` (converted once and cached).

Everything goes to `--out` (default `predictions/` in the working directory): `predictions.jsonl`
and `predictions.csv` (per image: the top classes and scores of a classifier; the overlay file and
the fraction of pixels per class of a segmenter), and for a segmenter one
`<image name>.segmentation.png` per image (the label map in the PASCAL VOC palette blended over the
image, at its size). Files found in a directory keep their path relative to it; names that would
collide get a numeric suffix. Existing files are never replaced without `--overwrite`. An image
that cannot be read is reported by name and the others are still processed; the exit status is
then 2.

Images go through `export.serving_functions(model)["serving_default"]`: the decoding,
preprocessing and post-processing graph that `mobilevitv2 export` puts in the SavedModel.
"""

import csv
import glob
import importlib.util
import json
import os
import sys
import warnings

import numpy as np

from keras_mobilevitv2.text import printable

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
CHECKPOINT_SUFFIXES = (".keras", ".pt", ".pth", ".bin", ".safetensors", ".h5", ".json")
DEFAULT_OUT = "predictions"
RESULTS_JSONL = "predictions.jsonl"
RESULTS_CSV = "predictions.csv"
OVERLAY_SUFFIX = ".segmentation.png"
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000  # preprocessing.MAX_IMAGE_PIXELS (not imported: --help stays TensorFlow-free)
# sample:NAME -> a photo inside scikit-image's package data (no download; public-domain test images).
SAMPLES = {"cat": "chelsea.png", "astronaut": "astronaut.png", "coffee": "coffee.png"}
EXIT_BAD_INPUT = 2


class _BadInput(Exception):
    """A user error: one `error:` line, exit status 2."""


def add_arguments(parser):
    parser.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files (JPEG, PNG, BMP, GIF), directories (searched recursively), globs ('photos/*.jpg'), "
        f"or sample:NAME for a photo that ships with scikit-image ({', '.join(SAMPLES)})",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="a .keras model, a Hugging Face directory or hub id, an ml-cvnets .pt, or a .safetensors file "
        "(anything from_pretrained reads; PyTorch files are converted once and cached)",
    )
    parser.add_argument("--compat", choices=("cvnets", "transformers"), help="for a checkpoint to convert (see convert)")
    parser.add_argument(
        "--out", metavar="DIR", default=DEFAULT_OUT,
        help=f"where the results ({RESULTS_JSONL}, {RESULTS_CSV}) and overlays go (default: ./{DEFAULT_OUT}/)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace result and overlay files that exist")
    parser.add_argument("--top-k", type=int, default=5, help="classifier: how many classes to report")
    parser.add_argument("--alpha", type=float, default=0.5, help="segmenter: opacity of the label colours")
    parser.add_argument(
        "--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
        help=f"refuse images whose header says more pixels than this (default {DEFAULT_MAX_IMAGE_PIXELS:,})",
    )


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _reason(err):
    """The op's own message in an eager TF error: no `{{function_node ...}}`, no `[Op:...]`."""
    return err.message.split("}}")[-1].split("[Op:")[0].strip()


def voc_palette(num_labels):
    """(num_labels, 3) uint8: PASCAL VOC's colour map (label 0 black, 1 dark red, 2 green, ...)."""
    labels = np.arange(num_labels)
    palette = np.zeros((num_labels, 3), np.uint8)
    for shift in range(7, -1, -1):
        for channel in range(3):
            bit = (labels >> (3 * (7 - shift) + channel)) & 1
            palette[:, channel] |= (bit << shift).astype(np.uint8)
    return palette


def overlay(image, label_map, alpha=0.5):
    """(H, W, 3) uint8 image and (H, W) label map -> (H, W, 3) uint8 blend with the VOC palette."""
    colours = voc_palette(int(label_map.max()) + 1)[label_map]
    return np.round((1 - alpha) * image + alpha * colours).astype(np.uint8)


# ----------------------------------------------------------------------------------- inputs
def sample_path(name):
    """The file behind `sample:NAME`: a photo in scikit-image's package data."""
    if name not in SAMPLES:
        raise _BadInput(f"unknown sample {name!r}; the samples are {', '.join('sample:' + n for n in SAMPLES)}")
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        from keras_mobilevitv2.extras import MissingExtraError

        raise MissingExtraError(f"sample:{name} is a photo that ships with scikit-image", "samples")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", SAMPLES[name])
    if not os.path.isfile(path):
        raise _BadInput(f"sample:{name}: {path} is missing from this scikit-image install")
    return path


def _is_image(path):
    return path.lower().endswith(IMAGE_SUFFIXES)


def collect_images(arguments):
    """[(path, output name without suffix)] for the IMAGE arguments, in order, each file once.

    A file or glob match is named by its base name; a file found in a directory by its path
    relative to that directory. Names that would collide get `-2`, `-3`, ...
    """
    found = []  # (path, relative name)
    missing = []
    for argument in arguments:
        if argument.startswith("sample:"):
            path = sample_path(argument.removeprefix("sample:"))
            found.append((path, os.path.basename(path)))
        elif os.path.isdir(argument):
            files = sorted(
                os.path.join(root, name)
                for root, dirs, names in os.walk(argument)
                for name in names
                if _is_image(name) and not name.endswith(OVERLAY_SUFFIX)
            )
            if not files:
                raise _BadInput(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in directory {argument}")
            found += [(path, os.path.relpath(path, argument)) for path in files]
        elif os.path.isfile(argument):
            found.append((argument, os.path.basename(argument)))
        elif glob.has_magic(argument):
            files = sorted(p for p in glob.glob(argument, recursive=True) if os.path.isfile(p) and _is_image(p))
            if not files:
                raise _BadInput(f"no image files match {argument}")
            found += [(path, os.path.basename(path)) for path in files]
        else:
            missing.append(argument)
    if missing:
        raise _BadInput(f"image file not found: {', '.join(missing)}")
    images, seen, names = [], set(), set()
    for path, relative in found:
        key = os.path.realpath(path)
        if key in seen:
            continue
        seen.add(key)
        stem = os.path.splitext(relative)[0]
        name, n = stem, 1
        while name.lower() in names:  # case-insensitive: safe on macOS and Windows file systems too
            n += 1
            name = f"{stem}-{n}"
        names.add(name.lower())
        images.append((path, name))
    return images


def pixel_count(path):
    """Width * height from the image header (PIL reads no pixels for this), or None if PIL cannot tell."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        return float("inf")
    except (OSError, ValueError):  # not an image PIL knows: TensorFlow's decoder says why below
        return None
    return width * height


# ---------------------------------------------------------------------------------- outputs
class Results:
    """`predictions.jsonl` (one object per image) and `predictions.csv` (one row per class), written as it goes."""

    CSV_FIELDS = {
        "image_classification": ["image", "rank", "index", "label", "score", "error"],
        "semantic_segmentation": ["image", "overlay", "index", "label", "fraction", "error"],
    }

    def __init__(self, out_dir, task):
        self.jsonl_path = os.path.join(out_dir, RESULTS_JSONL)
        self.csv_path = os.path.join(out_dir, RESULTS_CSV)
        self._jsonl = open(self.jsonl_path, "w", encoding="utf-8")
        self._csv_file = open(self.csv_path, "w", encoding="utf-8", newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=self.CSV_FIELDS[task])
        self._csv.writeheader()

    def add(self, record, rows):
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for row in rows or [{}]:
            self._csv.writerow({"image": record["image"], "error": record.get("error", ""), **row})
        self._csv_file.flush()

    def close(self):
        self._jsonl.close()
        self._csv_file.close()


def _check_outputs(out_dir, paths, overwrite):
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise _BadInput(f"--out {out_dir} exists and is not a directory")
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise _BadInput(f"{existing[0]} exists{more}; pass --overwrite to replace, or choose another --out")


def _load(args):
    from keras_mobilevitv2.hub import from_pretrained

    name = args.model
    print(f"loading {name}", file=sys.stderr, flush=True)
    try:
        return from_pretrained(name, compat=args.compat, verbose=bool(getattr(args, "verbose", False)))
    except (FileNotFoundError, ValueError) as err:  # ValueError: CheckpointError, ConversionError, bad config
        raise _BadInput(f"{name}: {err}" if name not in str(err) else str(err)) from None


def run(args):
    try:
        return _run(args)
    except _BadInput as err:
        return fail(err)


def _run(args):
    if not os.path.exists(args.model) and args.model.lower().endswith(CHECKPOINT_SUFFIXES):
        raise _BadInput(f"model file not found: {args.model}")  # a mistyped path, not a hub id: say so first
    if args.top_k < 1:
        raise _BadInput(f"--top-k must be a positive integer, received {args.top_k}")
    if not 0.0 <= args.alpha <= 1.0:
        raise _BadInput(f"--alpha must be in [0, 1], received {args.alpha}")
    if args.max_image_pixels < 1:
        raise _BadInput(f"--max-image-pixels must be a positive integer, received {args.max_image_pixels}")
    images = collect_images(args.images)
    results_paths = [os.path.join(args.out, RESULTS_JSONL), os.path.join(args.out, RESULTS_CSV)]
    _check_outputs(args.out, results_paths, args.overwrite)  # before the model loads: fail fast

    model = _load(args)
    import tensorflow as tf

    from keras_mobilevitv2 import export
    from keras_mobilevitv2.preprocessing import decode_image

    try:
        task = export.model_task(model)
    except TypeError as err:
        raise _BadInput(f"{args.model}: {err}") from None
    overlays = {path: os.path.join(args.out, name + OVERLAY_SUFFIX) for path, name in images}
    if task == "semantic_segmentation":
        _check_outputs(args.out, overlays.values(), args.overwrite)
    predict = export.serving_functions(
        model, top_k=min(args.top_k, model.config.num_labels), max_image_pixels=args.max_image_pixels
    )["serving_default"]
    id2label = model.config.id2label
    os.makedirs(args.out, exist_ok=True)
    results = Results(args.out, task)
    failed = []
    try:
        for path, _ in images:
            try:
                record, rows = _predict_one(path, predict, task, id2label, overlays[path], args, tf, decode_image)
            except _ImageError as err:
                print(f"error: {printable(path)}: {err}", file=sys.stderr, flush=True)
                failed.append(path)
                results.add({"image": path, "error": str(err)}, None)
                continue
            results.add(record, rows)
    finally:
        results.close()
    print(f"wrote {results.jsonl_path} and {results.csv_path} ({len(images) - len(failed)} of {len(images)} images)")
    if failed:
        print(f"error: {len(failed)} of {len(images)} images failed: {', '.join(map(printable, failed))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


class _ImageError(Exception):
    """One image could not be processed; the others go on."""


def _predict_one(path, predict, task, id2label, overlay_path, args, tf, decode_image):
    pixels = pixel_count(path)
    if pixels is not None and pixels > args.max_image_pixels:
        size = "too many" if pixels == float("inf") else f"{pixels:,}"
        raise _ImageError(f"{size} pixels, over --max-image-pixels {args.max_image_pixels:,}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise _ImageError(f"cannot read the file: {err.strerror}") from None
    try:
        # Eagerly first: a clear error for a bad file (the header's size is checked before the pixels).
        image = decode_image(data, max_pixels=args.max_image_pixels).numpy()
        outputs = predict(tf.constant([data]))
    except tf.errors.InvalidArgumentError as err:
        raise _ImageError(f"cannot decode the image: {_reason(err)}") from None
    except tf.errors.OpError as err:  # e.g. out of memory on one huge image
        raise _ImageError(f"{type(err).__name__}: {_reason(err)}") from None

    if task == "image_classification":
        top = [
            {"rank": rank, "index": int(index), "label": str(id2label.get(int(index), index)), "score": float(score)}
            for rank, (index, score) in enumerate(
                zip(outputs["top_k_indices"].numpy()[0], outputs["top_k_scores"].numpy()[0]), start=1
            )
        ]
        print(printable(path))
        for item in top:
            print(f"  {item['rank']}. {item['score']:.4f}  {printable(item['label'])} ({item['index']})")
        return {"image": path, "top_k": top}, top

    label_map = outputs["segmentation"].numpy()[0]  # one image: no padding
    os.makedirs(os.path.dirname(overlay_path), exist_ok=True)
    with open(overlay_path, "wb") as f:  # open(): the user's umask, not a temporary file's 0600
        f.write(tf.io.encode_png(overlay(image, label_map, args.alpha)).numpy())
    counts = np.bincount(label_map.ravel(), minlength=len(id2label))
    fractions = [
        {"index": int(i), "label": str(id2label.get(int(i), i)), "fraction": float(counts[i] / label_map.size)}
        for i in np.argsort(-counts, kind="stable") if counts[i] > 0
    ]
    found = ", ".join(f"{printable(item['label'])} {item['fraction']:.1%}" for item in fractions)
    print(f"{printable(path)} -> {overlay_path}  ({found})")
    record = {"image": path, "overlay": overlay_path, "class_fractions": {f["label"]: f["fraction"] for f in fractions}}
    return record, [{"overlay": overlay_path, **item} for item in fractions]
