"""The training loop both tasks share: one train step for every strategy, checkpoints, logs.

    with strategy.scope():
        model = ...
        optimizer = build_optimizer(recipe["optimizer"], WarmupCosineSchedule.from_recipe(...), model)
    trainer = Trainer(model, optimizer, loss_fn, strategy, LoopConfig(model_dir, epochs, steps_per_epoch, ...))
    trainer.restore()                      # the latest checkpoint of model_dir, if any
    trainer.fit(dataset_fn)                # dataset_fn(input_context, epoch) -> per-replica batches

`model.fit` is not used: it fails under MultiWorkerMirroredStrategy in Keras 3.15
(keras-team/keras#20585). The step below is the same under the default strategy,
MirroredStrategy and MultiWorkerMirroredStrategy: `strategy.run` inside a `tf.function`.

One optimizer update:

1. `accumulate` micro-batches on every replica: forward pass, the task loss (a mean over the
   micro-batch), the gradient of loss / (replicas * accumulate), times the loss scale under
   float16. With accumulate > 1 the gradients are summed in per-replica accumulators.
2. One all-reduce (sum) over the replicas: the gradient of the mean loss over the global batch.
3. Clipping by the global norm of that whole gradient (ml-cvnets: 10). Keras' optimizer clips
   each replica's gradient before it all-reduces (a per-replica norm), so clipping is done here.
4. AdamW (Keras), weight decay left off norm scales / shifts and biases; under float16 through
   `LossScaleOptimizer`, which skips the update when the gradient is not finite. Keras'
   `apply` all-reduces (sums) the gradients itself; it is given each replica's 1/replicas share
   of the already reduced gradient, which costs a second all-reduce per update (once per
   `accumulate` micro-batches) but keeps Keras' update, weight decay and loss scaling as they are.
5. BatchNorm moving statistics averaged over the replicas (each replica moved them with its own
   micro-batches; PyTorch DDP instead broadcasts rank 0's), so every replica holds the same model.
6. The exponential moving average (EMA) of all model weights, moving statistics included (as
   ml-cvnets), takes a step, its decay warmed up over the first steps; the run's end evaluates
   it and the raw weights and exports the better (`training.run`).

Checkpoints (`tf.train.CheckpointManager`, written to a temporary file and renamed) hold the model's
weights keyed by their paths (`weights/<path>`), the optimizer (its iteration count and moments,
the loss scale), the EMA (`ema/<i>`, in `model.weights` order), the global step and the
skipped-image count. They are written at the end of every epoch and every `checkpoint_every`
steps. On resume the loop continues at the saved global step: the epoch's input pipeline is
rebuilt (its seed depends only on the recipe seed and the epoch) and the micro-batches the saved
steps consumed are skipped, so with a fixed seed the resumed run sees the batches the killed one
would have seen.
"""

import dataclasses
import datetime
import functools
import hashlib
import json
import math
import os
import shutil
import sys
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2


CHECKPOINT_SUBDIR = "checkpoints"
LOG_SUBDIR = "logs"
RUNS_LOG = "runs.jsonl"  # one JSON line per start of a run: where it resumed from

NORMALIZATION_LAYERS = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,  # MobileViTV2's "layer norm" (one group)
)


# ------------------------------------------------------------------------------ learning rate
@keras.saving.register_keras_serializable(package="keras_mobilevitv2")
class WarmupCosineSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """ml-cvnets' cosine schedule: linear warmup per step, then cosine from max_lr to min_lr.

    For step < warmup_steps: warmup_init_lr + step * (max_lr - warmup_init_lr) / warmup_steps.
    After it, with `cosine_per="epoch"` (ml-cvnets' `is_iteration_based: false`):
    min_lr + (max_lr - min_lr) * (1 + cos(pi * epoch / epochs)) / 2, epoch = step // steps_per_epoch;
    with `cosine_per="step"`: the same over (step - warmup_steps) / (total_steps - warmup_steps + 1).

    Args:
        max_lr, min_lr: the cosine's start and end.
        warmup_steps: optimizer steps of linear warmup (0: none).
        warmup_init_lr: the learning rate at step 0 of the warmup.
        epochs, steps_per_epoch: the length of training.
        cosine_per: "epoch" or "step".
    """

    def __init__(self, max_lr, min_lr, warmup_steps, warmup_init_lr, epochs, steps_per_epoch, cosine_per="epoch"):
        for name, value in (("max_lr", max_lr), ("min_lr", min_lr), ("warmup_init_lr", warmup_init_lr)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a non-negative number, received {name}={value!r}")
        for name, value, low in (("warmup_steps", warmup_steps, 0), ("epochs", epochs, 1), ("steps_per_epoch", steps_per_epoch, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, received {name}={value!r}")
        if cosine_per not in ("epoch", "step"):
            raise ValueError(f"cosine_per must be 'epoch' or 'step', received cosine_per={cosine_per!r}")
        self.max_lr = float(max_lr)
        self.min_lr = float(min_lr)
        self.warmup_steps = warmup_steps
        self.warmup_init_lr = float(warmup_init_lr)
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.cosine_per = cosine_per

    @classmethod
    def from_recipe(cls, schedule, epochs, steps_per_epoch):
        """From a recipe's `schedule` section (name "warmup_cosine")."""
        if schedule.get("name") != "warmup_cosine":
            raise ValueError(f"schedule.name must be 'warmup_cosine', received {schedule.get('name')!r}")
        return cls(
            max_lr=schedule["max_lr"],
            min_lr=schedule["min_lr"],
            warmup_steps=schedule["warmup_steps"],
            warmup_init_lr=schedule["warmup_init_lr"],
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            cosine_per=schedule.get("cosine_per", "epoch"),
        )

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warmup = max(self.warmup_steps, 1)
        warm = self.warmup_init_lr + step * ((self.max_lr - self.warmup_init_lr) / warmup)
        if self.cosine_per == "epoch":
            progress = keras.ops.floor(step / self.steps_per_epoch) / self.epochs
        else:
            period = self.epochs * self.steps_per_epoch - self.warmup_steps + 1
            progress = (step - self.warmup_steps) / max(period, 1)
        progress = keras.ops.clip(progress, 0.0, 1.0)
        cosine = self.min_lr + 0.5 * (self.max_lr - self.min_lr) * (1.0 + keras.ops.cos(math.pi * progress))
        return keras.ops.where(step < self.warmup_steps, warm, cosine)

    def get_config(self):
        return {
            "max_lr": self.max_lr,
            "min_lr": self.min_lr,
            "warmup_steps": self.warmup_steps,
            "warmup_init_lr": self.warmup_init_lr,
            "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "cosine_per": self.cosine_per,
        }


# ------------------------------------------------------------------------------ optimizer
def _all_layers(model):
    """Every layer inside `model`, nested ones included (the model itself left out)."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)]


def no_weight_decay_variables(model):
    """The trainable variables weight decay leaves alone: those of normalization layers
    (BatchNormalization, LayerNormalization, GroupNormalization: scales and shifts)
    and every bias."""
    excluded = {}
    for layer in _all_layers(model):
        if isinstance(layer, NORMALIZATION_LAYERS):
            for variable in layer.trainable_variables:
                excluded[id(variable)] = variable
        bias = getattr(layer, "bias", None)
        if isinstance(bias, keras.Variable) and bias.trainable:
            excluded[id(bias)] = bias
    return [v for v in model.trainable_variables if id(v) in excluded]


def build_optimizer(optimizer, learning_rate, model, loss_scaling=False):
    """AdamW from a recipe's `optimizer` section; call it inside `strategy.scope()`.

    Weight decay skips `no_weight_decay_variables(model)` when the section's
    `exclude_norm_and_bias_from_weight_decay` is true. `global_clipnorm` is not given to Keras:
    the `Trainer` clips the all-reduced gradient. `loss_scaling` wraps it in a
    `LossScaleOptimizer` (float16 mixed precision).
    """
    if optimizer.get("name") != "adamw":
        raise ValueError(f"optimizer.name must be 'adamw', received {optimizer.get('name')!r}")
    adamw = keras.optimizers.AdamW(
        learning_rate=learning_rate,
        weight_decay=optimizer["weight_decay"],
        beta_1=optimizer["beta_1"],
        beta_2=optimizer["beta_2"],
        epsilon=optimizer["epsilon"],
    )
    if optimizer.get("exclude_norm_and_bias_from_weight_decay", True):
        adamw.exclude_from_weight_decay(var_list=no_weight_decay_variables(model))
    return keras.optimizers.LossScaleOptimizer(adamw) if loss_scaling else adamw


# ------------------------------------------------------------------------------ EMA
class ExponentialMovingAverage:
    """Shadow copies of a model's float weights: shadow <- d * shadow + (1 - d) * weight.

    d is `decay`, or with `warmup` min(decay, (1 + step) / (10 + step)) at update `step`
    (`tf.train.ExponentialMovingAverage`'s num_updates; timm's ModelEmaV3 warms up alike): early
    updates move the average fast, so after a short run it holds trained weights, not the
    initial ones (0.9995 alone keeps 95% of the init after 100 steps).
    Create it inside `strategy.scope()` after the model's weights are set (the shadows start
    equal to them); checkpoint `shadows`. `update` runs in cross-replica context.
    """

    def __init__(self, model, decay, warmup=True):
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), received decay={decay!r}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.weights = [w for w in model.weights if keras.backend.is_float_dtype(w.dtype)]
        self.paths = [w.path for w in self.weights]
        self.shadows = [
            tf.Variable(tf.identity(w.value), trainable=False, name="ema/" + w.path.replace(":", "_"))
            for w in self.weights
        ]

    def decay_at(self, step):
        """The decay of the update at `step` (0-based; a tensor or a number)."""
        if not self.warmup:
            return tf.constant(self.decay, tf.float32)
        step = tf.cast(step, tf.float32)
        return tf.minimum(self.decay, (1.0 + step) / (10.0 + step))

    def update(self, step=0):
        decay = self.decay_at(step)
        for shadow, weight in zip(self.shadows, self.weights):
            d = tf.cast(decay, shadow.dtype)
            shadow.assign(d * shadow + (1.0 - d) * tf.cast(weight.value, shadow.dtype))

    def values(self):
        """{weight path: numpy value of its average}."""
        return {path: shadow.numpy() for path, shadow in zip(self.paths, self.shadows)}


# ------------------------------------------------------------------------------ helpers
def summary_scalar(name, value):
    """Write a scalar TensorBoard reads, inside a `writer.as_default(step=...)` block.

    `tf.summary.scalar` needs the tensorboard package, which TensorFlow 2.21 no longer installs;
    this writes the same record (a float32 tensor tagged with the "scalars" plugin) with TF alone.
    """
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    tf.summary.write(name, tf.constant(float(value), tf.float32), metadata=metadata.SerializeToString())


def is_chief(strategy):
    """True on the worker that writes checkpoints, logs and exports (always, without a cluster)."""
    return bool(getattr(strategy.extended, "should_checkpoint", True))


def worker_id(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return "chief"
    return f"{resolver.task_type}-{resolver.task_id}"


def weights_sha256(variables):
    """A digest of the variables' values, in order (to compare states across processes)."""
    digest = hashlib.sha256()
    for variable in variables:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).tobytes())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """How the `Trainer` runs.

    Args:
        model_dir: checkpoints go to `model_dir/checkpoints`, TensorBoard logs to `model_dir/logs`.
        epochs, steps_per_epoch: the length of training, in optimizer updates.
        global_batch_size: images per update over all replicas and micro-batches (for images/s).
        accumulate: micro-batches per replica whose gradients make one update.
        clipnorm: clip the gradient to this global norm (None: no clipping).
        ema_decay: keep an EMA of the weights with this decay (None: no EMA).
        ema_warmup: warm the EMA decay up (see `ExponentialMovingAverage`).
        checkpoint_every: also checkpoint every this many updates (0: at epoch ends only).
        keep_checkpoints: how many checkpoints to keep.
        log_every: TensorBoard and log-line interval, in updates.
    """

    model_dir: str
    epochs: int
    steps_per_epoch: int
    global_batch_size: int
    accumulate: int = 1
    clipnorm: Optional[float] = None
    ema_decay: Optional[float] = None
    ema_warmup: bool = True
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    log_every: int = 10

    def __post_init__(self):
        for name, low in (("epochs", 1), ("steps_per_epoch", 1), ("global_batch_size", 1), ("accumulate", 1),
                          ("checkpoint_every", 0), ("keep_checkpoints", 1), ("log_every", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, received {name}={value!r}")
        if self.clipnorm is not None and not self.clipnorm > 0:
            raise ValueError(f"clipnorm must be positive or None, received clipnorm={self.clipnorm!r}")

    @property
    def total_steps(self):
        return self.epochs * self.steps_per_epoch


# ------------------------------------------------------------------------------ the trainer
class Trainer:
    """Trains `model` with `optimizer` on `loss_fn(labels, logits) -> scalar` (a mean over the
    micro-batch) under `strategy`; see the module docstring for one update.

    The model and optimizer must have been created inside `strategy.scope()`. Every worker of a
    multi-worker cluster runs the same calls; only the chief writes logs and real checkpoints
    (the others write theirs to a temporary directory and delete it, as TF requires all to save).
    `skip_counter` (a `training.data.SkipCounter`) is logged and checkpointed.
    """

    def __init__(self, model, optimizer, loss_fn, strategy, config, skip_counter=None):
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.strategy = strategy
        self.config = config
        self.skip_counter = skip_counter
        self.chief = is_chief(strategy)
        self.replicas = strategy.num_replicas_in_sync
        self.loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        self._trainable = list(model.trainable_variables)
        self._moving_stats = [v for v in model.non_trainable_variables if keras.backend.is_float_dtype(v.dtype)]
        with strategy.scope():
            optimizer.build(self._trainable)
            self.global_step = tf.Variable(
                0, dtype=tf.int64, trainable=False, name="global_step",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
            self.ema = ExponentialMovingAverage(model, config.ema_decay, config.ema_warmup) if config.ema_decay else None
            self._accumulators = [
                tf.Variable(
                    tf.zeros(v.shape, v.dtype), trainable=False, name="grad_accumulator",
                    synchronization=tf.VariableSynchronization.ON_READ, aggregation=tf.VariableAggregation.SUM,
                )
                for v in self._trainable
            ] if config.accumulate > 1 else []
        # Saved so that a resume with another batch size (another meaning of "step") is refused.
        self._saved_steps_per_epoch = tf.Variable(config.steps_per_epoch, dtype=tf.int64, trainable=False)
        # The model's weights by path, not the model object: TF's object graph of a Keras 3 model
        # does not reach the sublayers of every custom layer (e.g. the MobileNet stages), so
        # `Checkpoint(model=model)` would silently leave their moving statistics out.
        weights = {w.path: w for w in model.weights}
        if len(weights) != len(model.weights):
            raise ValueError("the model has two weights with the same path; checkpoints key weights by path")
        tracked = dict(
            weights=weights, optimizer=optimizer, global_step=self.global_step, steps_per_epoch=self._saved_steps_per_epoch
        )
        if self.ema is not None:
            tracked["ema"] = self.ema.shadows
        # The skipped-image count at the start of the current epoch: a resume mid-epoch re-reads
        # (and so re-counts) the epoch's first batches, so it restarts the count from there.
        self._epoch_start_skips = tf.Variable(0, dtype=tf.int64, trainable=False)
        if skip_counter is not None:
            tracked["skipped_images"] = skip_counter.variable
            tracked["skipped_images_at_epoch_start"] = self._epoch_start_skips
        self.checkpoint = tf.train.Checkpoint(**tracked)
        self.checkpoint_dir = os.path.join(config.model_dir, CHECKPOINT_SUBDIR)
        write_dir = self.checkpoint_dir if self.chief else os.path.join(self.checkpoint_dir, f".tmp-{worker_id(strategy)}")
        self._manager = tf.train.CheckpointManager(self.checkpoint, write_dir, max_to_keep=config.keep_checkpoints)
        log_dir = os.path.join(config.model_dir, LOG_SUBDIR)
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "train")) if self.chief else tf.summary.create_noop_writer()
        self.eval_writer = tf.summary.create_file_writer(os.path.join(log_dir, "eval")) if self.chief else tf.summary.create_noop_writer()
        # One {"step", "loss" (mean since the last entry), "lr", "grad_norm", "images_per_second"}
        # per log interval of this process.
        self.history = []
        self._accumulate_step = tf.function(self._accumulate_step_fn)
        self._update_step = tf.function(self._update_step_fn)

    # -------------------------------------------------------------------- the step
    def _replica_gradients(self, images, labels):
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            loss = tf.cast(self.loss_fn(labels, logits), tf.float32)
            scaled = loss / (self.replicas * self.config.accumulate)
            if self.loss_scaling:
                scaled = self.optimizer.scale_loss(scaled)
        return loss, tape.gradient(scaled, self._trainable)

    def _replica_accumulate(self, images, labels):
        loss, grads = self._replica_gradients(images, labels)
        for accumulator, grad in zip(self._accumulators, grads):
            accumulator.assign_add(grad)
        return loss

    def _replica_update(self, images, labels):
        loss, grads = self._replica_gradients(images, labels)
        if self._accumulators:
            grads = [accumulator + grad for accumulator, grad in zip(self._accumulators, grads)]
            for accumulator in self._accumulators:
                accumulator.assign(tf.zeros_like(accumulator))
        context = tf.distribute.get_replica_context()
        if self.replicas > 1:
            grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        # The gradients carry the loss scale: clip at clipnorm * scale (the norm is homogeneous).
        scale = tf.cast(self.optimizer.dynamic_scale, tf.float32) if self.loss_scaling else tf.constant(1.0)
        if self.config.clipnorm:
            grads, norm = tf.clip_by_global_norm(grads, self.config.clipnorm * scale)
        else:
            norm = tf.linalg.global_norm(grads)
        if self.replicas > 1:
            grads = [g / self.replicas for g in grads]  # Keras' apply sums them over the replicas again
        self.optimizer.apply(grads, self._trainable)
        if self.replicas > 1 and self._moving_stats:
            means = context.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in self._moving_stats])
            for variable, mean in zip(self._moving_stats, means):
                variable.assign(mean)
        return loss, norm / scale

    def _accumulate_step_fn(self, iterator):
        images, labels = next(iterator)
        loss = self.strategy.run(self._replica_accumulate, args=(images, labels))
        return self.strategy.reduce(tf.distribute.ReduceOp.MEAN, loss, axis=None)

    def _update_step_fn(self, iterator):
        images, labels = next(iterator)
        loss, norm = self.strategy.run(self._replica_update, args=(images, labels))
        if self.ema is not None:
            self.ema.update(self.global_step)
        self.global_step.assign_add(1)
        mean = tf.distribute.ReduceOp.MEAN
        return self.strategy.reduce(mean, loss, axis=None), self.strategy.reduce(mean, norm, axis=None)

    def train_step(self, iterator):
        """One optimizer update from `accumulate` micro-batches of a distributed iterator.

        Returns (mean loss over the micro-batches, global gradient norm before clipping).
        """
        losses = [float(self._accumulate_step(iterator)) for _ in range(self.config.accumulate - 1)]
        loss, norm = self._update_step(iterator)
        losses.append(float(loss))
        return sum(losses) / len(losses), float(norm)

    # -------------------------------------------------------------------- state
    @property
    def step(self):
        return int(self.global_step.numpy())

    def learning_rate(self):
        return float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))

    def save(self):
        """Checkpoint now (every worker must call it); returns the chief's checkpoint path."""
        path = self._manager.save(checkpoint_number=self.step)
        if not self.chief:
            shutil.rmtree(self._manager.directory, ignore_errors=True)
        return path

    def restore(self):
        """Restore the latest checkpoint of `model_dir`, if any; returns its path or None.

        Logs the start (where from, the step, the optimizer's iteration count, digests of the
        model's and the optimizer's variables) as a line of `model_dir/runs.jsonl`.
        """
        latest = tf.train.latest_checkpoint(self.checkpoint_dir)
        if latest is not None:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            saved = int(self._saved_steps_per_epoch.numpy())
            if saved != self.config.steps_per_epoch:
                raise ValueError(
                    f"{latest} was written with {saved} steps per epoch, this run has "
                    f"{self.config.steps_per_epoch}: resume with the same batch size, accumulation and "
                    "--steps-per-epoch, or start in a new --model-dir"
                )
            if self.skip_counter is not None and self.step % self.config.steps_per_epoch:
                self.skip_counter.variable.assign(self._epoch_start_skips)
            self._log(f"resumed from {latest} at step {self.step} (epoch {self.step // self.config.steps_per_epoch})")
        if self.replicas > 1:
            self._check_same_step_everywhere()
        if self.chief:
            record = {
                "started": datetime.datetime.now().isoformat(timespec="seconds"),
                "restored_from": latest,
                "global_step": self.step,
                "optimizer_iterations": int(keras.ops.convert_to_numpy(self.optimizer.iterations)),
                "weights_sha256": weights_sha256(self.model.weights),
                "optimizer_sha256": weights_sha256(self.optimizer.variables),
                "replicas": self.replicas,
                "accumulate": self.config.accumulate,
            }
            os.makedirs(self.config.model_dir, exist_ok=True)
            with open(os.path.join(self.config.model_dir, RUNS_LOG), "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        return latest

    def _check_same_step_everywhere(self):
        """Raise on every worker if the workers restored different steps (each reads the chief's
        checkpoint directory; without a shared file system they would go on out of step and hang)."""

        @tf.function
        def moments():
            def local():
                step = tf.cast(self.global_step, tf.float64)
                return step, step * step

            step, square = self.strategy.run(local)
            mean = tf.distribute.ReduceOp.MEAN
            return self.strategy.reduce(mean, step, axis=None), self.strategy.reduce(mean, square, axis=None)

        mean, mean_square = (float(v) for v in moments())
        if mean_square - mean * mean > 0:
            raise ValueError(
                f"the workers resumed at different steps (mean {mean:g}, local {self.step}): every worker "
                f"must see the chief's checkpoints in {self.checkpoint_dir} (a shared file system)"
            )

    def raw_weights(self):
        """{weight path: numpy value} of the trained (not averaged) weights."""
        return {w.path: keras.ops.convert_to_numpy(w) for w in self.model.weights}

    def final_weights(self):
        """{weight path: numpy value}: the EMA weights when there is an EMA, else the live ones."""
        values = {w.path: keras.ops.convert_to_numpy(w) for w in self.model.weights}
        if self.ema is not None:
            values.update(self.ema.values())
        return values

    # -------------------------------------------------------------------- the loop
    def _epoch_dataset(self, dataset_fn, epoch, steps_done, input_context):
        dataset = dataset_fn(input_context, epoch).repeat()
        replicas_per_pipeline = input_context.num_replicas_in_sync // input_context.num_input_pipelines
        consumed = steps_done * self.config.accumulate * replicas_per_pipeline
        return dataset.skip(consumed) if consumed else dataset

    def _log(self, message):
        if self.chief:
            print(f"[train] {message}", flush=True)

    def fit(self, dataset_fn, on_epoch_end=None):
        """Train from the current global step to `epochs * steps_per_epoch`.

        `dataset_fn(input_context, epoch)` returns one epoch of this input pipeline's
        per-replica micro-batches (`(images, labels)`); it is repeated if it runs short and its
        first batches are skipped when resuming mid-epoch. `on_epoch_end(epoch)` runs (on
        every worker) after each epoch's checkpoint, epoch counted from 1.

        A non-finite loss (or gradient norm, without loss scaling) raises `FloatingPointError`
        before that step is checkpointed: the checkpoints end at the last good step.
        """
        config = self.config
        spe = config.steps_per_epoch
        interactive = self.chief and sys.stdout.isatty()
        start_step, start_time = self.step, time.perf_counter()
        while self.step < config.total_steps:
            epoch, done = divmod(self.step, spe)
            if done == 0 and self.skip_counter is not None:
                self._epoch_start_skips.assign(self.skip_counter.variable)
            distributed = self.strategy.distribute_datasets_from_function(
                functools.partial(self._epoch_dataset, dataset_fn, epoch, done)
            )
            iterator = iter(distributed)
            progbar = keras.utils.Progbar(spe, stateful_metrics=["loss", "lr", "images/s"]) if interactive else None
            if progbar is not None:
                print(f"Epoch {epoch + 1}/{config.epochs}")
                progbar.update(done)
            window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
            for _ in range(done, spe):
                lr = self.learning_rate()
                loss, norm = self.train_step(iterator)
                step = self.step
                # Stop before this step's weights reach a checkpoint; under float16 loss scaling a
                # non-finite gradient is normal (the update is skipped and the scale lowered).
                if not math.isfinite(loss) or (not self.loss_scaling and not math.isfinite(norm)):
                    latest = tf.train.latest_checkpoint(self.checkpoint_dir)
                    what = f"the loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {norm}"
                    raise FloatingPointError(
                        f"step {step}: {what} (learning rate {lr:.3g}); the last good checkpoint is "
                        f"{latest or 'none (no checkpoint was written)'}"
                    )
                window_loss += loss
                window_steps += 1
                if step % config.log_every == 0 or step % spe == 0:
                    seconds = time.perf_counter() - window_start
                    rate = window_steps * config.global_batch_size / max(seconds, 1e-9)
                    mean_loss = window_loss / window_steps
                    self.history.append({"step": step, "loss": mean_loss, "lr": lr, "grad_norm": norm, "images_per_second": rate})
                    self._write_scalars(step, mean_loss, lr, norm, rate)
                    if progbar is not None:
                        progbar.update(step - epoch * spe, [("loss", mean_loss), ("lr", lr), ("images/s", rate)])
                    else:
                        per_step = (time.perf_counter() - start_time) / max(step - start_step, 1)
                        eta = datetime.timedelta(seconds=round(per_step * (config.total_steps - step)))
                        self._log(
                            f"step {step}/{config.total_steps} (epoch {epoch + 1}/{config.epochs}) images/s {rate:.1f} "
                            f"loss {mean_loss:.4f} lr {lr:.3g} grad-norm {norm:.3g} ETA {eta}"
                        )
                    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
                if config.checkpoint_every and step % config.checkpoint_every == 0 and step % spe:
                    self.save()
            path = self.save()
            self._log(f"epoch {epoch + 1} done; checkpoint {path}")
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1)

    def _write_scalars(self, step, loss, lr, norm, rate):
        with self.writer.as_default(step=step):
            summary_scalar("train/loss", loss)
            summary_scalar("train/learning_rate", lr)
            summary_scalar("train/gradient_norm", norm)
            summary_scalar("train/images_per_second", rate)
            if self.loss_scaling:
                summary_scalar("train/loss_scale", self.optimizer.dynamic_scale.numpy())
            if self.skip_counter is not None:
                summary_scalar("data/skipped_images", self.skip_counter.count)
        self.writer.flush()

    def write_eval_scalars(self, metrics, step=None):
        """Log the numeric entries of an evaluation's metrics dict under eval/."""
        with self.eval_writer.as_default(step=self.step if step is None else step):
            for name, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    summary_scalar(f"eval/{name}", value)
        self.eval_writer.flush()
