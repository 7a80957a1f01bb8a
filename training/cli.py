"""Training from the command line, for both tasks: the options, and the run they drive.

    python -m training.train_classification --data-dir /data/imagenet --model-dir runs/in1k
    python -m training.train_segmentation --data-dir /data/VOCdevkit/VOC2012 --model-dir runs/voc \\
        --init runs/in1k/model.keras --batch-size 8 --accumulate auto
    mobilevitv2 train classification|segmentation ... (the same options)

A run: the recipe (`--recipe`, then `--set` overrides, then the shortcut options) -> the
distribution strategy -> the model (a preset's architecture at the recipe's width; with `--init`,
the backbone weights of a pretrained model and, when the labels differ, a new head) -> the
`training.loop.Trainer` (resuming from the latest checkpoint of `--model-dir`) -> evaluation of the
EMA weights -> `MODEL_DIR/model.keras` and, unless `--no-export`, a TF Serving bundle
(`MODEL_DIR/serving/<name>/<version>/`, a SavedModel with the `serving_default` and
`predict_pixels` signatures of `keras_mobilevitv2.export`, and `MODEL_DIR/serving/models.config`).

The model directory:

    recipe.json         the recipe as run (after overrides) and the batching it resolved to
    runs.jsonl          one line per start: checkpoint resumed from, step, weights digest
    checkpoints/        tf.train.CheckpointManager checkpoints (every epoch, every --checkpoint-every steps)
    logs/train, logs/eval   TensorBoard scalars
    model.keras, eval_metrics.json, serving/
"""

import argparse
import dataclasses
import importlib
import json
import os

TASK_MODULES = {
    "classification": "training.train_classification",
    "segmentation": "training.train_segmentation",
}
STRATEGIES = ("default", "mirrored", "multiworker")
PRECISIONS = ("auto", "float16", "bfloat16", "off")


# ------------------------------------------------------------------------------ options
def _positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, received {text}")
    return value


def _accumulate(text):
    return "auto" if text == "auto" else _positive_int(text)


def add_train_arguments(parser, default_recipe):
    """The options of `train_classification` / `train_segmentation` (and `mobilevitv2 train TASK`)."""
    parser.add_argument(
        "--recipe", default=default_recipe,
        help=f"a recipe name from training/recipes/ or a path to a recipe JSON file (default {default_recipe})",
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
    parser.add_argument("--width", type=float, help="the width multiplier (sets model.width_multiplier), e.g. 0.5")
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
        help="images per replica per micro-batch (default: the recipe's global batch / replicas / --accumulate)",
    )
    parser.add_argument(
        "--accumulate", type=_accumulate, metavar="N|auto",
        help="micro-batches whose gradients make one update, so that batch-size x replicas x N is the "
        "recipe's global batch; 'auto' computes N from --batch-size (default 1)",
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
    parser.add_argument("--export-name", help="the served model's name in the TF Serving bundle (default: mobilevitv2_<task>)")


def add_arguments(parser):
    """`mobilevitv2 train TASK ...`."""
    subparsers = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    for task, module_name in TASK_MODULES.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(task, help=module.__doc__.split("\n")[0], description=module.__doc__.split("\n\n")[0])
        add_train_arguments(sub, module.TASK.default_recipe)


def run(args):
    module = importlib.import_module(TASK_MODULES[args.task])
    train(module.TASK, args)
    return 0


# ------------------------------------------------------------------------------ resolution
def resolve_recipe(args, task):
    """The recipe after `--set` and the shortcut options."""
    from keras_mobilevitv2.presets import get_preset
    from training.recipes import apply_overrides, load_recipe

    recipe = apply_overrides(load_recipe(args.recipe), args.set)
    if recipe["task"] != task.recipe_task:
        raise ValueError(f"recipe {recipe['name']!r} is for {recipe['task']}, this command trains {task.recipe_task}")
    model = recipe["model"]
    if args.preset:
        preset_width = get_preset(args.preset)["config"]["width_multiplier"]
        if args.width is not None and args.width != preset_width:
            raise ValueError(f"--preset {args.preset} has width {preset_width}, but --width {args.width} was given")
        model["preset"] = args.preset
        model["width_multiplier"] = preset_width
    if args.width is not None:
        model["width_multiplier"] = float(args.width)
    if args.init is not None:
        model["init_from"] = None if args.init.lower() == "none" else args.init
    if args.epochs is not None:
        recipe["epochs"] = args.epochs
    return recipe


def resolve_batching(global_batch, replicas, batch_size=None, accumulate=None):
    """(per-replica micro-batch, accumulation steps) with micro-batch x replicas x steps = global_batch."""
    if accumulate == "auto":
        if batch_size is None:
            raise ValueError("--accumulate auto needs --batch-size (the micro-batch per replica)")
        if global_batch % (batch_size * replicas):
            raise ValueError(
                f"the global batch {global_batch} is not a multiple of --batch-size {batch_size} x {replicas} replicas"
            )
        return batch_size, global_batch // (batch_size * replicas)
    steps = accumulate or 1
    if batch_size is None:
        if global_batch % (replicas * steps):
            raise ValueError(f"the global batch {global_batch} is not divisible by {replicas} replicas x {steps} accumulation steps")
        return global_batch // (replicas * steps), steps
    if batch_size * replicas * steps != global_batch:
        raise ValueError(
            f"--batch-size {batch_size} x {replicas} replicas x {steps} accumulation steps = "
            f"{batch_size * replicas * steps}, not the recipe's global batch {global_batch}; use "
            "--accumulate auto, or --set data.global_batch_size=..."
        )
    return batch_size, steps


def resolve_precision(choice, recipe):
    """The Keras dtype policy name: "float32", "mixed_float16" or "mixed_bfloat16"."""
    import tensorflow as tf

    if choice == "auto":
        if not recipe.get("mixed_precision", False):
            return "float32"
        if tf.config.list_physical_devices("GPU"):
            return "mixed_float16"
        print("[train] the recipe asks for mixed precision, but there is no GPU: training in float32")
        return "float32"
    return {"float16": "mixed_float16", "bfloat16": "mixed_bfloat16", "off": "float32"}[choice]


def make_strategy(name):
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy multiworker needs the cluster in the TF_CONFIG environment variable")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"strategy must be one of {STRATEGIES}, received {name!r}")


# ------------------------------------------------------------------------------ weights
def load_pretrained(name_or_path):
    """`keras_mobilevitv2.hub.from_pretrained` (which loads `.keras` files in any process)."""
    from keras_mobilevitv2.hub import from_pretrained

    return from_pretrained(name_or_path)


def transfer_weights(source, target):
    """Copy `source`'s backbone into `target`'s; the head too when both heads have the same
    variables and shapes. Returns a sentence saying what was copied."""
    from keras_mobilevitv2.backbone import MobileViTV2Backbone

    source_backbone = source if isinstance(source, MobileViTV2Backbone) else source.backbone
    values = {w.path: w for w in source_backbone.weights}
    missing, mismatched = [], []
    for weight in target.backbone.weights:
        if weight.path not in values:
            missing.append(weight.path)
        elif tuple(values[weight.path].shape) != tuple(weight.shape):
            mismatched.append(f"{weight.path} {tuple(values[weight.path].shape)} -> {tuple(weight.shape)}")
    if missing or mismatched:
        raise ValueError(
            "the --init model's backbone does not fit this model (is the width the same?): "
            f"missing {missing[:5]}, shapes differ {mismatched[:5]}"
        )
    for weight in target.backbone.weights:
        weight.assign(values[weight.path])
    backbone_paths = {w.path for w in target.backbone.weights}
    head = [w for w in target.weights if w.path not in backbone_paths]
    source_head = {w.path: w for w in source.weights if w.path not in values} if source is not source_backbone else {}
    if head and all(w.path in source_head and tuple(source_head[w.path].shape) == tuple(w.shape) for w in head) and len(head) == len(source_head):
        for weight in head:
            weight.assign(source_head[weight.path])
        return f"backbone and head ({len(head)} variables) copied"
    return f"backbone copied; new head ({len(head)} variables, {target.config.num_labels} labels)"


def export_copy(model, values):
    """A float32 copy of `model` (built outside any strategy) holding `values` ({path: array})."""
    import keras

    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = model.__class__.from_config(model.get_config())
    finally:
        keras.mixed_precision.set_global_policy(policy)
    paths = [w.path for w in copy.weights]
    if sorted(paths) != sorted(values):
        raise ValueError(f"the copy's weights differ from the trained model's: {sorted(set(paths) ^ set(values))[:5]}")
    copy.set_weights([values[p] for p in paths])
    return copy


# ------------------------------------------------------------------------------ the run
def train(task, args):
    """Run training as the options say.

    Returns {"trainer": the `Trainer` (its model, optimizer, EMA, history), "metrics": the final
    evaluation, "model_path": the .keras file, "saved_model": the exported version directory};
    on a worker other than the chief, only "trainer".
    """
    strategy = make_strategy(args.strategy)  # first: MultiWorkerMirroredStrategy must precede other TF work

    import keras

    previous_policy = keras.mixed_precision.global_policy()
    try:
        return _train(task, args, strategy)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)  # the dtype policy is process-wide


def _train(task, args, strategy):
    import keras

    from training.data import SkipCounter
    from training.loop import LoopConfig, Trainer, WarmupCosineSchedule, build_optimizer, is_chief

    recipe = resolve_recipe(args, task)
    if recipe.get("seed") is not None:
        keras.utils.set_random_seed(recipe["seed"])  # the initial weights (and dropout) follow the recipe's seed
    chief = is_chief(strategy)
    say = (lambda message: print(f"[train] {message}", flush=True)) if chief else (lambda message: None)
    data = task.inspect_data(recipe, args.data_dir)
    global_batch = recipe["data"]["global_batch_size"]
    micro_batch, accumulate = resolve_batching(global_batch, strategy.num_replicas_in_sync, args.batch_size, args.accumulate)
    steps_per_epoch = args.steps_per_epoch or data.num_examples // global_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"{data.num_examples} training images make no batch of {global_batch}: lower data.global_batch_size "
            "or give --steps-per-epoch"
        )
    say(
        f"{task.name}: {data.num_examples} training images, global batch {global_batch} = {micro_batch} per replica x "
        f"{strategy.num_replicas_in_sync} replicas x {accumulate} accumulation steps, {steps_per_epoch} steps per "
        f"epoch, {recipe['epochs']} epochs"
    )

    init = recipe["model"].get("init_from")
    source = load_pretrained(init) if init else None
    policy = resolve_precision(args.mixed_precision, recipe)
    keras.mixed_precision.set_global_policy(policy)
    with strategy.scope():
        model = task.build_model(recipe, data, source)
        if source is not None:
            say(f"--init {init}: {transfer_weights(source, model)}")
        schedule = WarmupCosineSchedule.from_recipe(recipe["schedule"], recipe["epochs"], steps_per_epoch)
        optimizer = build_optimizer(recipe["optimizer"], schedule, model, loss_scaling=policy == "mixed_float16")
    del source
    ema = recipe.get("ema", {})
    config = LoopConfig(
        model_dir=args.model_dir,
        epochs=recipe["epochs"],
        steps_per_epoch=steps_per_epoch,
        global_batch_size=global_batch,
        accumulate=accumulate,
        clipnorm=recipe["optimizer"].get("global_clipnorm"),
        ema_decay=ema.get("decay") if ema.get("enabled") else None,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        log_every=args.log_every,
    )
    skip_counter = SkipCounter()
    trainer = Trainer(model, optimizer, task.loss_fn(recipe), strategy, config, skip_counter)
    if chief:
        os.makedirs(args.model_dir, exist_ok=True)
        resolved = {
            "recipe": recipe,
            "batching": {"per_replica": micro_batch, "replicas": strategy.num_replicas_in_sync, "accumulate": accumulate},
            "steps_per_epoch": steps_per_epoch,
            "dtype_policy": policy,
            "strategy": args.strategy,
        }
        with open(os.path.join(args.model_dir, "recipe.json"), "w", encoding="utf-8") as f:
            json.dump(resolved, f, indent=2)
    trainer.restore()

    def evaluate_now(label):
        copy = export_copy(model, trainer.final_weights())
        metrics = task.evaluate(copy, recipe, args.data_dir)
        say(f"evaluation ({label}, {'EMA' if trainer.ema else 'final'} weights):\n{task.report(metrics)}")
        trainer.write_eval_scalars({k: v for k, v in metrics.items() if isinstance(v, float)})
        return copy, metrics

    def on_epoch_end(epoch):
        if chief and args.eval_every and epoch % args.eval_every == 0 and epoch < recipe["epochs"]:
            evaluate_now(f"epoch {epoch}")

    trainer.fit(task.dataset_fn(recipe, args.data_dir, micro_batch, skip_counter), on_epoch_end)
    say(f"training done at step {trainer.step}; {skip_counter.count} unreadable images skipped")

    result = {"trainer": trainer}
    if chief:
        final, metrics = evaluate_now("end")
        result["metrics"] = metrics
        with open(os.path.join(args.model_dir, "eval_metrics.json"), "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2)
        result["model_path"] = os.path.join(args.model_dir, "model.keras")
        final.save(result["model_path"])
        say(f"saved {result['model_path']}")
        if not args.no_export:
            result.update(_export(final, args, task))
    if args.strategy == "multiworker":
        _barrier(strategy)  # the other workers wait for the chief's evaluation and export
    return result


def _export(model, args, task):
    """The TF Serving bundle; its version directory is the SavedModel (`export_saved_model`'s
    signatures plus warmup requests), so it is written once."""
    from keras_mobilevitv2.export import export_serving_bundle

    version_dir = export_serving_bundle(
        model, os.path.join(args.model_dir, "serving"), args.export_name or f"mobilevitv2_{task.name}"
    )
    print(f"[train] exported the SavedModel / TF Serving version {version_dir}", flush=True)
    return {"saved_model": version_dir}


def _barrier(strategy):
    import tensorflow as tf

    @tf.function
    def all_reduce_one():
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)

    all_reduce_one()


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a task found in its data directory: the training set size and the class names."""

    num_examples: int
    class_names: tuple = ()
