"""`mobilevitv2 train TASK`: the options of a training run; the run itself is `training.run.train`.

    mobilevitv2 train image_classification --data-dir photos --model-dir runs/photos --init m.keras --epochs 10
    mobilevitv2 train semantic_segmentation --data-dir /data/VOCdevkit/VOC2012 --model-dir runs/voc --batch-size 8
    python -m training.train_classification ...   (the same options, one task)

TASK is a task name of `keras_mobilevitv2.tasks` (`classification` and `segmentation`, the old
spellings, are accepted too). Exit status: 0 done, 1 the loss became non-finite (nothing
exported), 2 a mistake (one `error:` line). See `training/run.py` for what a run writes.
"""

import argparse
import importlib

from keras_mobilevitv2.cli.common import run_guarded
from training.run import PRECISIONS, STRATEGIES

# The modules whose `TASK` trains one task each (`TASK.task_name`, a name of keras_mobilevitv2.tasks).
TRAINING_MODULES = ("training.train_classification", "training.train_segmentation")


def _positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, received {text}")
    return value


def _accumulate(text):
    return "auto" if text == "auto" else _positive_int(text)


def add_train_arguments(parser, task):
    """The options of `train_classification` / `train_segmentation` (and `mobilevitv2 train TASK`),
    for `task` (a module's `TASK`).

    Builds the parser without importing TensorFlow (so `--help` answers at once)."""
    default_recipe = task.default_recipe
    parser.set_defaults(_default_recipe=default_recipe)
    parser.add_argument(
        "--recipe",
        help=f"a recipe name from training/recipes/ or a path to a recipe JSON file. Without it the run "
        f"fine-tunes on your data with the {default_recipe} recipe's optimizer and augmentations, scaled "
        "to the run (your --batch-size, warmup and cosine over your steps, labels from the data); naming "
        "a recipe also uses its global batch (accumulating micro-batches as needed), i.e. reproduces it",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe field by its dotted path, e.g. --set optimizer.weight_decay=0.01 "
        "--set data.image_size=224 (repeatable; the value must have the field's type)",
    )
    parser.add_argument("--data-dir", required=True, help="the dataset root (ImageNet-style folder or VOC2012 folder)")
    parser.add_argument(
        "--model-dir", required=True,
        help="where checkpoints, logs and the final model go; a run started again with the same "
        "--model-dir resumes from its latest checkpoint",
    )
    parser.add_argument(
        "--preset",
        help="the architecture preset (sets model.preset and its width), e.g. mobilevitv2-0.5-imagenet1k-256",
    )
    parser.add_argument("--width", type=float, help="the width multiplier (sets model.width_multiplier), e.g. 0.5; "
                        "with --init, taken from that model")
    parser.add_argument(
        "--image-size", type=_positive_int, metavar="PIXELS",
        help="the training crop side (classification: data.image_size, evaluated and served as a "
        "PIXELS crop of the shortest edge resized by the recipe's ratio, 288/256; segmentation: "
        "data.crop_size, served with the shortest edge at PIXELS). Saved in model.keras and the export",
    )
    parser.add_argument("--num-labels", type=_positive_int, help="the class count (default: the class folders / the dataset's 21)")
    parser.add_argument(
        "--init", metavar="FROM",
        help="start from pretrained weights (sets model.init_from): a .keras file, a Hugging Face "
        "directory or hub id, an ml-cvnets .pt or a timm file (anything from_pretrained reads). The "
        "backbone is reused; the head too when the task and label count agree, else a new head is "
        "trained. 'none' trains from scratch.",
    )
    parser.add_argument(
        "--strategy", choices=STRATEGIES, default="default",
        help="default: one device; mirrored: all local GPUs (MirroredStrategy); multiworker: "
        "MultiWorkerMirroredStrategy over the cluster in the TF_CONFIG environment variable (start "
        "the same command on every worker; the chief writes checkpoints, logs and the model)",
    )
    parser.add_argument(
        "--mixed-precision", choices=PRECISIONS, default="auto",
        help="float16 (with dynamic loss scaling) or bfloat16 compute with float32 weights; auto "
        "follows the recipe's mixed_precision on a GPU and uses float32 on a CPU (default auto)",
    )
    parser.add_argument(
        "--batch-size", type=_positive_int,
        help="images per optimizer step on this machine (split over its replicas; default "
        f"{task.default_batch}, at most the training set; with --recipe: the recipe's global batch)",
    )
    parser.add_argument(
        "--accumulate", type=_accumulate, metavar="N|auto",
        help="micro-batches of --batch-size whose gradients make one update (default 1); 'auto' "
        "accumulates as many as reach the recipe's global batch (data.global_batch_size)",
    )
    parser.add_argument("--epochs", type=_positive_int, help="epochs (default: the recipe's)")
    parser.add_argument(
        "--steps-per-epoch", type=_positive_int,
        help="optimizer updates per epoch (default: training images // global batch); small values make smoke runs",
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=1000, metavar="STEPS",
        help="checkpoint every STEPS updates as well as at each epoch end (0: epoch ends only; default 1000)",
    )
    parser.add_argument("--keep-checkpoints", type=_positive_int, default=3, help="checkpoints kept (default 3)")
    parser.add_argument("--log-every", type=_positive_int, default=10, metavar="STEPS", help="log interval in updates (default 10)")
    parser.add_argument(
        "--eval-every", type=int, default=0, metavar="EPOCHS",
        help="also evaluate the EMA weights every EPOCHS epochs (default 0: only at the end)",
    )
    parser.add_argument(
        "--no-export", action="store_true",
        help="save only MODEL_DIR/model.keras, without the SavedModel / TF Serving bundle",
    )
    parser.add_argument(
        "--export-name", help=f"the served model's name in the TF Serving bundle (default: {task.serving_name})"
    )


def add_arguments(parser):
    """`mobilevitv2 train TASK ...`."""
    from keras_mobilevitv2.tasks import CLI_ALIASES

    subparsers = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    for module_name in TRAINING_MODULES:
        module = importlib.import_module(module_name)
        name = module.TASK.task_name
        sub = subparsers.add_parser(
            name,
            aliases=[alias for alias, task in CLI_ALIASES.items() if task == name],
            help=module.__doc__.split("\n")[0],
            description=module.__doc__.split("\n\n")[0],
        )
        add_train_arguments(sub, module.TASK)
        sub.set_defaults(_training_module=module_name)


def run(args):
    module = importlib.import_module(args._training_module)
    return run_training(module.TASK, args)


def run_training(task, args):
    """`training.run.train(task, args)` for a command line: the exit status, user mistakes as one
    `error:` line.

    0: trained and saved; 1: the loss became non-finite (the checkpoints stop at the last good
    step, nothing is exported); 2: a mistake in the options, the model directory or the data.
    """
    from training.run import NonFiniteLoss, data_error_message, train

    status, _ = run_guarded(
        lambda: train(task, args),
        (ValueError, FileNotFoundError, NotADirectoryError, OSError),
        statuses={NonFiniteLoss: 1},
        translate=data_error_message,
    )
    return status


def main(task, argv=None, prog=None, description=None):
    """`python -m training.train_classification` / `train_segmentation`: one task's options."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog="Outputs and resuming: see training/run.py.")
    add_train_arguments(parser, task)
    return run_training(task, parser.parse_args(argv))
