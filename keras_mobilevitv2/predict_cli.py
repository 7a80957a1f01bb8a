"""`mobilevitv2 predict`: run a saved model on image files.

    mobilevitv2 predict cat.jpg dog.png --model classifier.keras [--top-k 5]
    mobilevitv2 predict street.jpg --model segmenter.keras [--out DIR] [--alpha 0.5]

A classifier prints its top classes and probabilities per image. A segmenter writes
`<image name>.segmentation.png` (the label map in the PASCAL VOC palette blended over the image, at
the image's size) next to the image or into `--out`, and prints where, with the classes it found.

Images go through `export.serving_functions(model)["serving_default"]`: the decoding,
preprocessing and post-processing graph that `mobilevitv2 export` puts in the SavedModel, around
the model as `compile_for_inference` runs it (BatchNorm folded, weights as constants).
"""

import os
import sys

import numpy as np


def add_arguments(parser):
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG, PNG, BMP or GIF files")
    parser.add_argument("--model", required=True, help="a .keras model file (a MobileViTV2 classifier or segmenter)")
    parser.add_argument("--top-k", type=int, default=5, help="classifier: how many classes to print")
    parser.add_argument(
        "--max-image-pixels", type=int, metavar="N",
        help="refuse images whose header claims more than N pixels, before decoding "
        "(default: keras_mobilevitv2.preprocessing.MAX_IMAGE_PIXELS, 50 megapixels)",
    )
    parser.add_argument("--out", metavar="DIR", help="segmenter: where to write the PNGs (default: beside each image)")
    parser.add_argument("--alpha", type=float, default=0.5, help="segmenter: opacity of the label colours")


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    return 2


def _reason(err):
    """The op's own message in an eager TF error: no `{{function_node ...}}`, no `[Op:...]`."""
    from keras_mobilevitv2.preprocessing import _op_message

    return _op_message(err)


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


def segmentation_path(image_path, out_dir=None):
    stem = os.path.splitext(os.path.basename(image_path))[0]
    return os.path.join(out_dir or os.path.dirname(os.path.abspath(image_path)), f"{stem}.segmentation.png")


def run(args):
    missing = [path for path in args.images if not os.path.isfile(path)]
    if missing:
        return fail(f"image file not found: {', '.join(missing)}")
    if args.top_k < 1:
        return fail(f"--top-k must be a positive integer, received {args.top_k}")
    if args.max_image_pixels is not None and args.max_image_pixels < 1:
        return fail(f"--max-image-pixels must be a positive integer, received {args.max_image_pixels}")
    if not 0.0 <= args.alpha <= 1.0:
        return fail(f"--alpha must be in [0, 1], received {args.alpha}")
    from keras_mobilevitv2.export_cli import load_model

    try:
        print(f"loading {args.model}", file=sys.stderr, flush=True)
        model = load_model(args.model)
    except (FileNotFoundError, ValueError) as err:
        return fail(str(err))

    import tensorflow as tf

    from keras_mobilevitv2 import export
    from keras_mobilevitv2.preprocessing import MAX_IMAGE_PIXELS, decode_image

    if args.max_image_pixels is None:
        args.max_image_pixels = MAX_IMAGE_PIXELS

    try:
        task = export.model_task(model)
    except TypeError as err:
        return fail(f"{args.model}: {err}")
    predict = export.serving_functions(model, top_k=args.top_k, max_image_pixels=args.max_image_pixels)[
        "serving_default"
    ]
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    status = 0
    for path in args.images:
        with open(path, "rb") as f:
            data = f.read()
        try:
            # eagerly first: a clear error for a bad file (the header is read before the pixels)
            image = decode_image(data, max_pixels=args.max_image_pixels).numpy()
        except tf.errors.InvalidArgumentError as err:
            status = fail(f"{path}: cannot decode the image: {_reason(err)}")
            continue
        outputs = predict(tf.constant([data]))
        if task == "image_classification":
            print(path)
            labels = outputs["top_k_labels"].numpy()[0]
            for rank, (index, score, label) in enumerate(
                zip(outputs["top_k_indices"].numpy()[0], outputs["top_k_scores"].numpy()[0], labels), start=1
            ):
                print(f"  {rank}. {score:.4f}  {label.decode('utf-8')} ({index})")
        else:
            label_map = outputs["segmentation"].numpy()[0]  # one image: no padding
            out_path = segmentation_path(path, args.out)
            tf.io.write_file(out_path, tf.io.encode_png(overlay(image, label_map, args.alpha)))
            counts = np.bincount(label_map.ravel(), minlength=model.config.num_labels)
            found = [
                f"{model.config.id2label[i]} {counts[i] / label_map.size:.1%}"
                for i in np.argsort(-counts) if counts[i] > 0
            ]
            print(f"{path} -> {out_path}  ({', '.join(found)})")
    return status
