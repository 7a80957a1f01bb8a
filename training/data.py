"""What the ImageNet and VOC pipelines share: skipping unreadable images, per-element seeds, options.

- `SkipCounter`: a `tf.Variable` counting the images a pipeline skipped because they could not be
  decoded (truncated, corrupt, not an image). The pipelines never crash on such a file; they log
  its name to stderr and count it. A training loop reads `counter.count` and logs it.
- `decode_or_skip`: decodes each element inside a one-element dataset with `ignore_errors`, so a
  decoding error becomes an "ok = False" flag instead of an exception.
- `with_seeds`: pairs each element with its own (2,) seed for the stateless augmentations in
  `training.augment`; a fixed `seed` makes the pipeline reproducible.
- `PipelineOptions`: the fields every pipeline has (batching, shuffling, sharding, determinism).
"""

import dataclasses
import sys
from typing import Optional

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


class SkipCounter:
    """Counts the examples a pipeline skipped as unreadable; readable from the training loop.

    Create it eagerly (outside `tf.function` and outside a `tf.distribute` strategy scope, the
    input pipeline runs on the host) and pass it to a pipeline builder; one counter may serve
    several pipelines. `count` is the running total.
    """

    def __init__(self, name="skipped_images"):
        self.variable = tf.Variable(0, dtype=tf.int64, trainable=False, name=name)

    @property
    def count(self):
        return int(self.variable.numpy())

    def reset(self):
        self.variable.assign(0)

    def __repr__(self):
        return f"SkipCounter(count={self.count})"


def decode_or_skip(dataset, decode_fn, num_parallel_calls=AUTOTUNE, cycle_length=16):
    """Map `decode_fn` over `dataset` so that an error gives ok = False instead of raising.

    Elements become `(decode_fn(*element), ok, element)`. When any op inside `decode_fn` fails
    (corrupt JPEG, unknown format, missing file, ...) the output is a zero placeholder and
    `ok` is False; filter on `ok` next (`keep_readable`). Each element runs in a one-element
    dataset with `ignore_errors`, followed by the placeholder: `interleave` takes the first
    element of each, in order, `cycle_length` elements in parallel. (A nested dataset consumed
    with `reduce` instead costs ~100 ms per element in graph rewrites.) Errors that must stop
    training belong outside `decode_fn`.
    """

    def one(*element):
        decoded = tf.data.Dataset.from_tensors(element).map(lambda *e: (decode_fn(*e), tf.constant(True)))
        placeholder = tf.nest.map_structure(
            lambda s: tf.zeros([0 if d is None else d for d in s.shape], s.dtype), decoded.element_spec[0]
        )
        failed = tf.data.Dataset.from_tensors((placeholder, tf.constant(False)))
        first = decoded.ignore_errors().concatenate(failed).take(1)
        return first.map(lambda out, ok: (out, ok, element))

    return dataset.interleave(one, cycle_length=cycle_length, block_length=1, num_parallel_calls=num_parallel_calls)


def keep_readable(ok, name, skip_counter=None, what="image"):
    """A `filter` predicate body: counts and logs an unreadable example, returns `ok`."""
    if skip_counter is not None:
        skip_counter.variable.assign_add(tf.cast(tf.logical_not(ok), tf.int64))

    def log():
        tf.print(f"skipping unreadable {what}:", name, output_stream=sys.stderr)
        return tf.constant(False)

    return tf.cond(ok, lambda: tf.constant(True), log)


def with_seeds(dataset, seed):
    """(element...) -> (element..., seed) with a fresh (2,) int64 seed per element.

    The seed stream is `tf.data.Dataset.random(seed)`: reproducible for a fixed `seed`, different
    on each new iteration (epoch) of the dataset, and different on every run when `seed` is None.
    """
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((dataset, seeds)).map(
        lambda element, s: (*element, s) if isinstance(element, tuple) else (element, s)
    )


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
    """Options every pipeline has.

    Args:
        batch_size: examples per batch of this worker (the global batch divided by the workers).
        shuffle_buffer: examples in the shuffle buffer (training only; TFRecords and VOC. An
            image folder shuffles all its file names every epoch).
        seed: base seed of shuffling and augmentation; None draws a new one each run.
        deterministic: keep the element order fixed under parallel decoding. With a seed and
            `deterministic=True` two runs yield identical batches; False lets fast elements
            overtake slow ones (faster, order varies). Evaluation always keeps the file order.
        num_workers, worker_index: multi-worker sharding, `dataset.shard(num_workers,
            worker_index)` over files (ImageNet folder / VOC lists) or TFRecord shards. With
            `tf.distribute`, take them from the `InputContext` of
            `distribute_datasets_from_function`: `num_input_pipelines`, `input_pipeline_id`,
            and `batch_size=ctx.get_per_replica_batch_size(global_batch)`.
        num_parallel_calls: parallelism of decoding and augmentation (AUTOTUNE by default).
        prefetch: batches prepared ahead (AUTOTUNE by default).
    """

    batch_size: int = 32
    shuffle_buffer: int = 10_000
    seed: Optional[int] = None
    deterministic: bool = False
    num_workers: int = 1
    worker_index: int = 0
    num_parallel_calls: int = AUTOTUNE
    prefetch: int = AUTOTUNE

    def __post_init__(self):
        for name in ("batch_size", "num_workers"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ValueError(f"{name} must be a positive int, received {name}={value!r}")
        if not _is_int(self.shuffle_buffer) or self.shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be a non-negative int, received shuffle_buffer={self.shuffle_buffer!r}")
        if not _is_int(self.worker_index) or not 0 <= self.worker_index < self.num_workers:
            raise ValueError(
                f"worker_index must be in [0, num_workers={self.num_workers}), received worker_index={self.worker_index!r}"
            )
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"seed must be an int or None, received seed={self.seed!r}")
        if not isinstance(self.deterministic, bool):
            raise ValueError(f"deterministic must be a bool, received deterministic={self.deterministic!r}")
        for name in ("num_parallel_calls", "prefetch"):
            value = getattr(self, name)
            if not _is_int(value) or (value <= 0 and value != AUTOTUNE):
                raise ValueError(f"{name} must be a positive int or tf.data.AUTOTUNE, received {name}={value!r}")


def check_range(name, value, low, high, inclusive_high=True):
    """Raise unless `value` is a number in [low, high] (or [low, high))."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and low <= value and (value <= high if inclusive_high else value < high)
    if not ok:
        bracket = "]" if inclusive_high else ")"
        raise ValueError(f"{name} must be a number in [{low}, {high}{bracket}, received {name}={value!r}")


def check_pair(name, value, low=0.0):
    """Raise unless `value` is a (min, max) pair of numbers with low <= min <= max."""
    ok = isinstance(value, (tuple, list)) and len(value) == 2
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not ok or not low <= value[0] <= value[1]:
        raise ValueError(f"{name} must be a (min, max) pair with {low} <= min <= max, received {name}={value!r}")


def options_from_recipe(options_class, recipe, num_workers, worker_index, not_options, **changes):
    """An options dataclass from `recipe["data"]`: fields by name, the global batch split over
    the workers, `recipe["seed"]`; keys in `not_options` are skipped, any other unknown key is an
    error (recipes and options stay in sync)."""
    data = dict(recipe["data"])
    fields = {f.name for f in dataclasses.fields(options_class)}
    kwargs = {}
    for key, value in data.items():
        if key in not_options or key == "note":
            continue
        if key not in fields:
            raise ValueError(f"recipe {recipe.get('name')!r}: data.{key} is not a field of {options_class.__name__}")
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    global_batch = data.get("global_batch_size", kwargs.get("batch_size"))
    if global_batch is not None:
        if global_batch % num_workers:
            raise ValueError(f"global_batch_size={global_batch} is not divisible by num_workers={num_workers}")
        kwargs["batch_size"] = global_batch // num_workers
    if "seed" in recipe:
        kwargs["seed"] = recipe["seed"]
    kwargs.update(num_workers=num_workers, worker_index=worker_index)
    kwargs.update(changes)
    return options_class(**kwargs)


def finalize(dataset, options, training=True):
    """Apply the determinism option to the whole pipeline and prefetch.

    Evaluation keeps the file order always: its batches are few and unshuffled, and callers
    pair predictions with the listed files.
    """
    tf_options = tf.data.Options()
    tf_options.deterministic = options.deterministic or not training
    return dataset.with_options(tf_options).prefetch(options.prefetch)
