"""`mobilevitv2 evaluate`: top-1 / top-5 on an ImageNet-style folder, mean IoU on PASCAL VOC.

    mobilevitv2 evaluate --model run/model.keras --data-dir /data/imagenet --task image_classification
    mobilevitv2 evaluate --model run/model.keras --data-dir /data/VOCdevkit/VOC2012 --task semantic_segmentation
    python -m training.evaluate ... (the same options)

`--task` also takes the old spellings `classification` / `segmentation`. The metrics are
`training.evaluate.evaluate`'s (see that module for how images are prepared and counted).
"""

import argparse
import json
import os

from keras_mobilevitv2.cli.common import fail, run_guarded
from keras_mobilevitv2.tasks import CLI_ALIASES, HEAD_TASK_NAMES, canonical_task


def add_arguments(parser):
    parser.add_argument(
        "--model", required=True,
        help="the model: a .keras file (e.g. MODEL_DIR/model.keras from training), or any checkpoint "
        "keras_mobilevitv2.from_pretrained reads (Hugging Face directory, ml-cvnets .pt, hub id)",
    )
    parser.add_argument(
        "--data-dir", required=True,
        help="classification: an ImageNet-style root holding SPLIT/<class>/*.JPEG; "
        "segmentation: the VOC2012 folder (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/)",
    )
    parser.add_argument("--task", required=True, choices=HEAD_TASK_NAMES + tuple(CLI_ALIASES), help="what the model does")
    parser.add_argument("--split", default="val", help="classification: the sub-folder; segmentation: the id list name (default val)")
    parser.add_argument("--batch-size", type=int, default=50, help="classification batch size (default 50); segmentation uses 1")
    parser.add_argument(
        "--label-file",
        help="classification with a flat DATA_DIR/SPLIT/*.JPEG folder: the labels (`name label` lines, or Kaggle's LOC_val_solution.csv)",
    )
    parser.add_argument(
        "--mask-dir", default="SegmentationClass",
        help="segmentation: the mask folder under DATA_DIR (SegmentationClass or SegmentationClassAug)",
    )
    parser.add_argument("--ignore-index", type=int, default=255, help="segmentation: the mask value left out of the metrics (default 255)")
    parser.add_argument("--output", help="also write the metrics to this JSON file")


def run(args):
    """`mobilevitv2 evaluate`: 0, or 2 with one `error:` line on a mistake (model, data, options)."""
    from training.evaluate import evaluate, report
    from training.run import data_error_message, load_pretrained

    task = canonical_task(args.task, aliases=True)
    if args.batch_size <= 0:
        return fail(f"--batch-size must be a positive integer, received {args.batch_size}")
    if not os.path.isdir(args.data_dir):
        return fail(f"--data-dir {args.data_dir} is not a directory")
    status, result = run_guarded(
        lambda: evaluate(
            load_pretrained(args.model), task, args.data_dir, args.split, args.batch_size, args.label_file,
            args.mask_dir, args.ignore_index,
        ),
        (ValueError, OSError, ImportError),
        translate=data_error_message,
    )
    if status:
        return status
    print(report(result, task))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


def main(argv=None, prog="python -m training.evaluate"):
    """`python -m training.evaluate`: the same options as `mobilevitv2 evaluate`."""
    from training import evaluate

    parser = argparse.ArgumentParser(prog=prog, description=evaluate.__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
