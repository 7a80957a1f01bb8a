"""`mobilevitv2 predict-batch`: batch inference over many images, an Apache Beam pipeline.

    mobilevitv2 predict-batch 'photos/*.jpg' --model model.keras --output-prefix out/run1-
    mobilevitv2 predict-batch 'data/val-*.tfrecord' --input-format tfrecord --model gs://bucket/model.keras \\
        --output-prefix gs://bucket/out/ --pipeline-options --runner=DataflowRunner --project=p --region=europe-west4
    mobilevitv2 predict-batch --model model.keras --output-prefix out/ 'photos/*.jpg' -- --runner=FlinkRunner

INPUT is a file or a glob (any file system Beam reads). Predictions go to
`<prefix>predictions-*.jsonl` (top-k with labels, or a segmenter's label-map PNGs under
`<prefix>label_maps/` and their index), images that failed to `<prefix>errors-*.jsonl`; the run
goes on past them and the exit status is then 2. Beam's pipeline options (`--runner`,
`--num_workers`, ...) are everything after `--pipeline-options` (last on the line), or after a `--`
that directly follows the INPUTs (options before them: argparse takes no positional after an
option); the default runner is the DirectRunner. See `keras_mobilevitv2.batch`.
"""

import argparse
import sys

INPUT_FORMATS = ("images", "tfrecord")  # batch.INPUT_FORMATS (not imported: --help needs no Beam)
EXIT_BAD_INPUT = 2


def add_arguments(parser):
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="image files or globs ('photos/*.jpg', 'gs://b/*.png'), or TFRecord files with --input-format tfrecord; "
        "after a `--` that follows them, Beam pipeline options (--runner=FlinkRunner ...)",
    )
    parser.add_argument(
        "--model", required=True,
        help="a .keras model (or anything `predict --model` reads), or a SavedModel directory of `mobilevitv2 export`",
    )
    parser.add_argument("--output-prefix", required=True, metavar="PREFIX", help="where the outputs go: out/ or gs://b/run1-")
    parser.add_argument("--input-format", choices=INPUT_FORMATS, default="images", help="image files (default) or TFRecords")
    parser.add_argument(
        "--image-feature", default="image/encoded", metavar="NAME",
        help="tfrecord: the bytes feature holding the encoded image (default image/encoded)",
    )
    parser.add_argument(
        "--key-feature", default="image/filename", metavar="NAME",
        help="tfrecord: the bytes feature naming the image (default image/filename; else file@hash of the record)",
    )
    parser.add_argument("--top-k", type=int, default=5, help="classifier: how many classes to report")
    parser.add_argument("--min-batch-size", type=int, default=1, help="RunInference's smallest batch (default 1)")
    parser.add_argument("--max-batch-size", type=int, default=16, help="RunInference's largest batch (default 16)")
    parser.add_argument(
        "--max-image-pixels", type=int, default=50_000_000, metavar="N",
        help="images whose header says more pixels are errors (default 50,000,000)",
    )
    parser.add_argument("--compat", choices=("cvnets", "transformers"), help="for a checkpoint to convert (see convert)")
    parser.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run under the prefix")
    parser.add_argument(
        "--pipeline-options", nargs=argparse.REMAINDER, default=[], metavar="BEAM_OPTION",
        help="last: everything after it goes to Beam's PipelineOptions (--runner=DataflowRunner --project=p ...)",
    )


def split_pipeline_args(items):
    """INPUTs, then the Beam options: argparse puts what follows `--` among the positionals, and
    only there can an item start with "-"."""
    for i, item in enumerate(items):
        if item.startswith("-"):
            return items[:i], items[i:]
    return items, []


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def run(args):
    inputs, pipeline_args = split_pipeline_args(args.inputs)
    pipeline_args += args.pipeline_options
    if not inputs:
        return fail("predict-batch needs at least one INPUT before `--`")
    from keras_mobilevitv2 import batch

    try:
        summary = batch.predict_batch(
            args.model, inputs, args.output_prefix, input_format=args.input_format,
            image_feature=args.image_feature, key_feature=args.key_feature, top_k=args.top_k,
            min_batch_size=args.min_batch_size, max_batch_size=args.max_batch_size,
            max_image_pixels=args.max_image_pixels, compat=args.compat, pipeline_args=pipeline_args,
            overwrite=args.overwrite,
        )
    except ValueError as err:  # BatchInputError, OutputExistsError, a checkpoint that cannot be read
        return fail(str(err))
    predicted, failed = summary["predicted"], summary["failed"]
    counts = "" if predicted is None else f" ({predicted} images predicted, {failed} failed)"
    print(f"wrote {summary['predictions']} and {summary['errors']}{counts}")
    if failed:
        return fail(f"{failed} images failed: see {summary['errors']}")
    return 0
