"""A training run, for both tasks: what the options (`keras_mobilevitv2.cli.train`) drive.

    python -m training.train_classification --data-dir photos --model-dir runs/photos --init m.keras --epochs 10
    python -m training.train_classification --recipe imagenet1k_mobilevitv2 --data-dir /data/imagenet --model-dir runs/in1k
    python -m training.train_segmentation --data-dir /data/VOCdevkit/VOC2012 --model-dir runs/voc \\
        --init runs/in1k/model.keras --batch-size 8 --accumulate auto
    mobilevitv2 train image_classification|semantic_segmentation ... (the same options)

Without `--recipe` a run fine-tunes: labels from the data, the recipe's `fine_tune` overrides,
`--batch-size` images per step, warmup and cosine over the run's steps. `train` raises `UserError`
on a mistake and `NonFiniteLoss` when the loss diverges (the command line's exit statuses 2 and 1).

A run: the recipe (`--recipe`, then `--set` overrides, then the shortcut options) -> the
distribution strategy -> the model (a preset's architecture at the recipe's width; with `--init`,
the backbone weights of a pretrained model and, when the labels differ, a new head) -> the
`training.loop.Trainer` (resuming from the latest checkpoint of `--model-dir`, after checking that its
recipe.json agrees) -> BatchNorm statistics recomputed, the raw and the EMA weights evaluated ->
the better in `MODEL_DIR/model.keras` and, unless `--no-export`, a TF Serving bundle
(`MODEL_DIR/serving/<name>/<version>/`, a SavedModel with the `serving_default` and
`predict_pixels` signatures of `keras_mobilevitv2.export`, and `MODEL_DIR/serving/models.config`).

The model directory:

    recipe.json         the recipe as run (after overrides) and the batching it resolved to
    runs.jsonl          one line per start: checkpoint resumed from, step, weights digest
    checkpoints/        tf.train.CheckpointManager checkpoints (every epoch, every --checkpoint-every steps)
    logs/train, logs/eval   TensorBoard scalars
    model.keras, eval_metrics.json, serving/
"""

import dataclasses
import json
import math
import os

STRATEGIES = ("default", "mirrored", "multiworker")
PRECISIONS = ("auto", "float16", "bfloat16", "off")


class UserError(ValueError):
    """A mistake in the command, the model directory or the data: one `error:` line, exit status 2."""


class NonFiniteLoss(RuntimeError):
    """The loss (or the gradient) became NaN / infinite: the run stops, nothing is exported."""


def data_error_message(error):
    """The message of a `ValueError` raised by a data check inside a tf.data pipeline (TF wraps it
    in an `OpError`), or None for any other error."""
    import re

    import tensorflow as tf

    if not isinstance(error, tf.errors.OpError):
        return None
    found = re.search(r"ValueError: (.*)", error.message)
    return found.group(1).strip() if found else None


# ------------------------------------------------------------------------------ resolution
def _was_set(args, field):
    return any(o.partition("=")[0].strip() == field for o in args.set)


def recipe_run(args):
    """True when a recipe was named: its global batch is then the run's (see `resolve_batching`)."""
    return args.recipe is not None


def resolve_recipe(args, task, source=None):
    """The recipe after `--set` and the shortcut options (and, with `--init`, the source model's width)."""
    from keras_mobilevitv2.presets import get_preset
    from training.recipes import apply_overrides, load_recipe

    base = load_recipe(args.recipe or args._default_recipe)
    if not recipe_run(args):  # fine-tuning: the recipe's own lighter settings for small data, then --set
        base = apply_overrides(base, base.get("fine_tune", {}).get("overrides", []))
    recipe = apply_overrides(base, args.set)
    if recipe["task"] != task.task_name:
        raise UserError(f"recipe {recipe['name']!r} is for {recipe['task']}, this command trains {task.task_name}")
    model = recipe["model"]
    if args.preset:
        preset_width = get_preset(args.preset)["config"]["width_multiplier"]
        if args.width is not None and args.width != preset_width:
            raise UserError(f"--preset {args.preset} has width {preset_width}, but --width {args.width} was given")
        model["preset"] = args.preset
        model["width_multiplier"] = preset_width
    if args.width is not None:
        model["width_multiplier"] = float(args.width)
    if args.init is not None:
        model["init_from"] = None if args.init.lower() == "none" else args.init
    elif args.width is not None and model.get("init_from"):
        model["init_from"] = _preset_at_width(model["init_from"], args.width)
    if source is not None:
        width = float(source.config.width_multiplier)
        if args.width is not None and float(args.width) != width:
            raise UserError(f"--width {args.width}, but the --init model {model['init_from']} has width {width:g}")
        model["width_multiplier"] = width
    if args.num_labels is not None:
        model["num_labels"] = args.num_labels
    if args.epochs is not None:
        recipe["epochs"] = args.epochs
    task.resolve_image_size(recipe, base, args.image_size, lambda field: _was_set(args, field))
    return recipe


def _preset_at_width(name, width):
    """A preset name like mobilevitv2-1.0-imagenet1k-256 at another width (unchanged if there is none)."""
    from keras_mobilevitv2.presets import PRESETS

    parts = name.split("-")
    if len(parts) < 3 or parts[0] != "mobilevitv2":
        return name
    text = f"{float(width):.2f}".rstrip("0")
    candidate = "-".join([parts[0], text + ("0" if text.endswith(".") else "")] + parts[2:])
    return candidate if candidate in PRESETS else name


def resolve_batching(global_batch, replicas, batch_size=None, accumulate=None, use_recipe_batch=False, default_batch=32, workers=1):
    """(per-replica micro-batch, accumulation steps, images per update over the cluster, a sentence).

    `batch_size` is the micro-batch of this machine, split over its `replicas`; `workers`
    machines (MultiWorkerMirroredStrategy) each take one. With `accumulate` N (default 1) an
    update takes batch_size x workers x N images; `accumulate="auto"` picks N so that it is the
    recipe's `global_batch`. Without `batch_size`: the recipe's global batch when
    `use_recipe_batch` (a named recipe, or `--set data.global_batch_size`), else `default_batch`.
    """
    if accumulate == "auto":
        if batch_size is None:
            raise UserError("--accumulate auto needs --batch-size (the micro-batch)")
        if global_batch % (batch_size * workers) or batch_size % replicas:
            raise UserError(
                f"the recipe's global batch {global_batch} is not a multiple of --batch-size {batch_size}"
                + (f" x {workers} workers" if workers > 1 else "")
                + (f" (or --batch-size does not split over {replicas} replicas)" if replicas > 1 else "")
            )
        steps = global_batch // (batch_size * workers)
        return batch_size // replicas, steps, global_batch, (
            f"the recipe's global batch: --batch-size {batch_size} x {steps} accumulated micro-batches (--accumulate auto)"
        )
    steps = accumulate or 1
    if batch_size is None:
        if use_recipe_batch:
            if global_batch % (replicas * workers * steps):
                raise UserError(
                    f"the global batch {global_batch} is not divisible by {replicas * workers} replicas x {steps} accumulation steps"
                )
            return global_batch // (replicas * workers * steps), steps, global_batch, f"the recipe's global batch {global_batch}"
        batch_size, how = default_batch, f"the default batch {default_batch}; set it with --batch-size"
    else:
        how = f"--batch-size {batch_size}" + (f" x --accumulate {steps}" if steps > 1 else "")
    if batch_size % replicas:
        raise UserError(f"--batch-size {batch_size} does not split over {replicas} replicas")
    return batch_size // replicas, steps, batch_size * workers * steps, how


def scaled_schedule(schedule, epochs, steps_per_epoch, fine_tune):
    """The recipe's schedule fitted to this run: warmup min(warmup_steps, max_warmup_fraction x
    total steps); for a fine-tune run (no named recipe) the cosine follows the steps, not the epochs."""
    schedule = dict(schedule)
    total = epochs * steps_per_epoch
    fraction = schedule.pop("max_warmup_fraction", None)
    if fraction is not None:
        schedule["warmup_steps"] = min(int(schedule["warmup_steps"]), int(math.ceil(fraction * total)))
    if fine_tune:
        schedule["cosine_per"] = "step"
    return schedule


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
            raise UserError("--strategy multiworker needs the cluster in the TF_CONFIG environment variable")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise UserError(f"strategy must be one of {STRATEGIES}, received {name!r}")


def local_replicas(strategy):
    """The replicas of this machine (all of them but under MultiWorkerMirroredStrategy)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    workers = 1
    if resolver is not None and resolver.task_type is not None:
        spec = resolver.cluster_spec().as_dict()
        workers = sum(len(spec.get(job, [])) for job in ("chief", "worker")) or 1
    return max(strategy.num_replicas_in_sync // workers, 1), workers


# Fields a resumed run must share with the run that wrote the checkpoints, by their recipe.json path.
RESUME_FIELDS = (
    ("width", ("recipe", "model", "width_multiplier")),
    ("labels", ("recipe", "model", "num_labels")),
    ("preset", ("recipe", "model", "preset")),
    ("task", ("recipe", "task")),
    ("image size", ("image_size",)),
    ("batch per replica", ("batching", "per_replica")),
    ("accumulation steps", ("batching", "accumulate")),
    ("steps per epoch", ("steps_per_epoch",)),
)


def check_resume(model_dir, resolved):
    """Raise `UserError` naming the field when `model_dir` holds checkpoints of a run whose
    recipe.json disagrees with `resolved` (called before anything is written)."""
    if not os.path.isdir(os.path.join(model_dir, "checkpoints")) or not any(
        f.endswith(".index") for f in os.listdir(os.path.join(model_dir, "checkpoints"))
    ):
        return
    path = os.path.join(model_dir, "recipe.json")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)

    def get(tree, keys):
        for key in keys:
            if not isinstance(tree, dict) or key not in tree:
                return None
            tree = tree[key]
        return tree

    for field, keys in RESUME_FIELDS:
        before, now = get(saved, keys), get(resolved, keys)
        if before is not None and before != now:
            raise UserError(
                f"--model-dir {model_dir} holds checkpoints of a run with {field} {before}, this run has "
                f"{field} {now}: resume with the same options, or start in a new --model-dir"
            )


# ------------------------------------------------------------------------------ weights
def load_pretrained(name_or_path):
    """`keras_mobilevitv2.hub.from_pretrained` (which loads `.keras` files in any process)."""
    from keras_mobilevitv2.hub import from_pretrained

    return from_pretrained(name_or_path)


def _hub_offline():
    """True when huggingface_hub is told to stay offline (HF_HUB_OFFLINE)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def load_init(name):
    """The `--init` / model.init_from model; a name that needs the unreachable hub is a `UserError`.

    Called before anything is written to the model dir. A hub id is downloaded (and converted,
    cached) here; offline (HF_HUB_OFFLINE) or when the download fails, the error says how to pass
    a local file instead."""
    from keras_mobilevitv2.extras import NetworkError

    how = (
        "download it where there is a network and pass the local file (--init /path/model.keras, a Hugging "
        "Face directory or an ml-cvnets .pt), or --init none to train from scratch"
    )
    if not os.path.exists(name) and _hub_offline():
        raise UserError(f"model.init_from {name!r} is not a local file and the Hugging Face hub is offline (HF_HUB_OFFLINE): {how}")
    try:
        return load_pretrained(name)
    except NetworkError as e:
        raise UserError(f"model.init_from {name!r}: {e} ({how})") from None
    except (OSError, ImportError) as e:
        raise UserError(f"--init {name}: {e}") from None


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
    evaluation of the exported weights, "exported": "EMA" or "raw", "model_path": the .keras
    file, "saved_model": the exported version directory}; on a worker other than the chief,
    only "trainer". Raises `UserError` on a mistake (before anything is written to the model
    directory when it can be seen from the options) and `NonFiniteLoss` when the loss diverges.
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

    chief = is_chief(strategy)
    say = (lambda message: print(f"[train] {message}", flush=True)) if chief else (lambda message: None)
    if not os.path.isdir(args.data_dir):
        raise UserError(f"--data-dir {args.data_dir} is not a directory")
    recipe = resolve_recipe(args, task)
    init = recipe["model"].get("init_from")
    source = load_init(init) if init else None  # before any work: a missing init fails at once
    if source is not None:
        recipe = resolve_recipe(args, task, source)
    if recipe.get("seed") is not None:
        keras.utils.set_random_seed(recipe["seed"])  # the initial weights (and dropout) follow the recipe's seed
    data = task.inspect_data(recipe, args.data_dir, labels_given=args.num_labels is not None or _was_set(args, "model.num_labels"))
    for line in data.notes:
        say(line)
    replicas, workers = local_replicas(strategy)
    use_recipe_batch = recipe_run(args) or _was_set(args, "data.global_batch_size")
    default_batch = task.default_batch
    if args.batch_size is None and not use_recipe_batch:  # a small folder still makes a batch
        default_batch = min(default_batch, max(replicas, (data.num_examples // workers) // replicas * replicas))
    micro_batch, accumulate, global_batch, how = resolve_batching(
        recipe["data"]["global_batch_size"], replicas, args.batch_size, args.accumulate,
        use_recipe_batch=use_recipe_batch, default_batch=default_batch, workers=workers,
    )
    steps_per_epoch = args.steps_per_epoch or data.num_examples // global_batch
    if steps_per_epoch < 1:
        raise UserError(
            f"{data.num_examples} training images make no batch of {global_batch}: pass a smaller --batch-size "
            "(or --steps-per-epoch)"
        )
    fine_tune = not recipe_run(args)
    schedule_section = scaled_schedule(recipe["schedule"], recipe["epochs"], steps_per_epoch, fine_tune)
    total_steps = recipe["epochs"] * steps_per_epoch
    resolved = {
        "recipe": recipe,
        "batching": {"per_replica": micro_batch, "replicas": strategy.num_replicas_in_sync, "accumulate": accumulate},
        "global_batch": global_batch,
        "steps_per_epoch": steps_per_epoch,
        "image_size": task.image_size(recipe),
        "schedule": schedule_section,
        "strategy": args.strategy,
    }
    check_resume(args.model_dir, resolved)  # before anything is written to the model directory
    say(
        f"{task.task_name}: {data.num_examples} training images, {recipe['model']['num_labels']} labels, width "
        f"{recipe['model']['width_multiplier']:g}, image size {task.image_size(recipe)}; "
        f"{'recipe ' + recipe['name'] if recipe_run(args) else 'fine-tuning with the ' + recipe['name'] + ' recipe scaled to the run'}"
    )
    say(
        f"batch: {global_batch} images per step = {micro_batch} per replica x {strategy.num_replicas_in_sync} replicas x "
        f"{accumulate} accumulation steps ({how})"
    )
    say(
        f"total steps {total_steps} ({recipe['epochs']} epochs x {steps_per_epoch} steps), warmup steps "
        f"{schedule_section['warmup_steps']}, peak LR {schedule_section['max_lr']:g}, cosine to "
        f"{schedule_section['min_lr']:g} per {schedule_section.get('cosine_per', 'epoch')}"
    )

    policy = resolve_precision(args.mixed_precision, recipe)
    keras.mixed_precision.set_global_policy(policy)
    with strategy.scope():
        model = task.build_model(recipe, data, source)
        if source is not None:
            say(f"--init {init}: {transfer_weights(source, model)}")
        schedule = WarmupCosineSchedule.from_recipe(schedule_section, recipe["epochs"], steps_per_epoch)
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
        ema_warmup=bool(ema.get("warmup", True)),
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        log_every=args.log_every,
    )
    if config.ema_decay:
        say(
            f"EMA of the weights, decay {config.ema_decay:g}"
            + (" with warmup: min(decay, (1 + step) / (10 + step))" if config.ema_warmup else "")
        )
    skip_counter = SkipCounter()
    trainer = Trainer(model, optimizer, task.loss_fn(recipe), strategy, config, skip_counter)
    if chief:
        os.makedirs(args.model_dir, exist_ok=True)
        with open(os.path.join(args.model_dir, "recipe.json"), "w", encoding="utf-8") as f:
            json.dump({**resolved, "dtype_policy": policy}, f, indent=2)
    trainer.restore()

    def evaluate_values(values, label, recalibrate=False):
        copy = export_copy(model, values)
        if recalibrate:
            seen = recalibrate_batchnorm(copy, task.dataset_fn(recipe, args.data_dir, micro_batch), BN_RECALIBRATION_BATCHES)
            say(f"{label}: BatchNorm statistics recomputed on {seen} training images (their running averages lag the weights)")
        metrics = task.evaluate(copy, recipe, args.data_dir)
        say(f"evaluation ({label}):\n{task.report(metrics)}")
        return copy, metrics

    def on_epoch_end(epoch):
        if chief and args.eval_every and epoch % args.eval_every == 0 and epoch < recipe["epochs"]:
            _, metrics = evaluate_values(trainer.final_weights(), f"epoch {epoch}, {'EMA' if trainer.ema else 'final'} weights")
            trainer.write_eval_scalars({k: v for k, v in metrics.items() if isinstance(v, float)})

    try:
        trainer.fit(task.dataset_fn(recipe, args.data_dir, micro_batch, skip_counter), on_epoch_end)
    except FloatingPointError as e:
        raise NonFiniteLoss(f"{e}; the run stopped, nothing was exported (lower schedule.max_lr, or check the data)") from None
    say(f"training done at step {trainer.step}; {skip_counter.count} unreadable images skipped")

    result = {"trainer": trainer}
    if chief:
        final, metrics, exported = _choose_weights(trainer, task, evaluate_values, say)
        trainer.write_eval_scalars({k: v for k, v in metrics.items() if isinstance(v, float)})
        result.update(metrics=metrics, exported=exported)
        with open(os.path.join(args.model_dir, "eval_metrics.json"), "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2)
        result["model_path"] = os.path.join(args.model_dir, "model.keras")
        final.save(result["model_path"])
        say(f"saved {result['model_path']} ({exported} weights)")
        if not args.no_export:
            result.update(_export(final, args, task))
    if args.strategy == "multiworker":
        _barrier(strategy)  # the other workers wait for the chief's evaluation and export
    return result


BN_RECALIBRATION_BATCHES = 16


def recalibrate_batchnorm(model, dataset_fn, batches):
    """Set every BatchNormalization's moving mean / variance to their average over `batches`
    training micro-batches of `dataset_fn(None, 0)` ("precise BN", Wu & Johnson 2021): the
    running averages of training follow weights that kept moving, which after a short run from
    scratch leaves them far from the final weights' statistics (the inference outputs collapse
    onto one class while the training-mode outputs are right). Returns the images seen."""
    import keras
    import tensorflow as tf

    from training.loop import _all_layers

    layers = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    seen = 0
    context = tf.distribute.InputContext()
    try:
        for k, (images, _) in enumerate(dataset_fn(context, 0).repeat().take(batches), start=1):
            for layer in layers:
                layer.momentum = (k - 1) / k  # the k-th batch gets weight 1/k: a plain average
            model(images, training=True)
            seen += int(images.shape[0])
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return seen


def _choose_weights(trainer, task, evaluate_values, say):
    """Evaluate the raw and (if any) the EMA weights; (model, metrics, "EMA" | "raw") of the better
    by `task.primary_metric` (the EMA on a tie: it is the smoother of the two)."""
    raw_model, raw = evaluate_values(trainer.raw_weights(), "raw weights", recalibrate=True)
    if trainer.ema is None:
        return raw_model, {**raw, "exported": "raw"}, "raw"
    ema_model, ema = evaluate_values(trainer.final_weights(), "EMA weights", recalibrate=True)
    key = task.primary_metric
    pick_ema = ema[key] >= raw[key]
    say(
        f"exporting the {'EMA' if pick_ema else 'raw'} weights: {key} {ema[key]:.4f} (EMA) vs {raw[key]:.4f} (raw)"
        + ("" if pick_ema else "; the EMA has not caught up with the weights in this run")
    )
    chosen_model, chosen, name = (ema_model, ema, "EMA") if pick_ema else (raw_model, raw, "raw")
    return chosen_model, {**chosen, "exported": name, "candidates": {"EMA": ema[key], "raw": raw[key]}}, name


def _export(model, args, task):
    """The TF Serving bundle; its version directory is the SavedModel (`export_saved_model`'s
    signatures plus warmup requests), so it is written once."""
    from keras_mobilevitv2.export import export_serving_bundle

    version_dir = export_serving_bundle(
        model, os.path.join(args.model_dir, "serving"), args.export_name or task.serving_name
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
    notes: tuple = ()  # sentences for the log (where the labels and the split came from)
