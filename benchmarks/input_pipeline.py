"""Images per second of the ImageNet input pipeline on this machine (and of a training step).

    python benchmarks/input_pipeline.py                  # ~200 generated JPEGs, a small table
    python benchmarks/input_pipeline.py --batches 40 --model-width none

Generates a temporary ImageNet-style folder of real JPEGs (crops of skimage.data photographs at
ImageNet-like sizes, 333..640 px), then times, after a warm-up, batches of:

- train: the full recipe (RandomResizedCrop, flip, RandAugment, RandomErasing, MixUp/CutMix),
- train without RandAugment (its share of the cost),
- eval: decode + `tf_preprocess` (shortest edge 288, centre crop 256).

`measure_train_step` times training steps of a model on synthetic batches, so the input
pipeline's rate can be read against what the model consumes; by default it builds a width-0.5
`MobileViTV2ImageClassifier`. `measure_trainer_step` times the step the train commands run
(`training.loop.Trainer`) on the same batches. A measurement, not a test: nothing is asserted.
"""

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

# Typical ImageNet image sizes (height, width).
IMAGENET_LIKE_SIZES = ((375, 500), (500, 375), (333, 500), (500, 333), (400, 500), (480, 640), (427, 640), (500, 500))


def make_folder(root, num_images=200, num_classes=10, seed=0):
    """root/train/<wnid>/*.JPEG with `num_images` JPEGs; returns the folder."""
    from tests import datasets

    rng = np.random.default_rng(seed)
    for i in range(num_images):
        label = i % num_classes
        folder = os.path.join(root, "train", f"n{label:08d}")
        os.makedirs(folder, exist_ok=True)
        size = IMAGENET_LIKE_SIZES[int(rng.integers(len(IMAGENET_LIKE_SIZES)))]
        image = datasets.varied_picture(i, size, rng)
        with open(os.path.join(folder, f"{i:05d}.JPEG"), "wb") as f:
            f.write(datasets.jpeg_bytes(image))
    return root


def images_per_second(dataset, batch_size, batches, warmup=3):
    """Images/s of iterating `dataset` (repeated) for `batches` batches after `warmup` batches."""
    iterator = iter(dataset.repeat())
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


# ------------------------------------------------------------------------------------------ hook
def measure_train_step(model=None, batch_size=16, image_size=256, num_classes=1000, steps=5, warmup=2):
    """Images/s of `model.train_on_batch` on synthetic normalized images and soft labels.

    MODEL HOOK: pass any compiled-or-not Keras classifier taking (B, image_size, image_size, 3)
    and returning logits (B, num_classes); with `model=None`, a width-0.5
    `keras_mobilevitv2.MobileViTV2ImageClassifier` is built. An uncompiled model is compiled with
    AdamW and categorical cross-entropy from logits, as the ImageNet recipe trains.
    """
    import keras

    if model is None:
        from keras_mobilevitv2 import MobileViTV2Config, MobileViTV2ImageClassifier

        model = MobileViTV2ImageClassifier(MobileViTV2Config(width_multiplier=0.5, num_labels=num_classes))
    if not getattr(model, "compiled", False):
        model.compile(
            optimizer=keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=0.05, global_clipnorm=10.0),
            loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        )
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (batch_size, image_size, image_size, 3)).astype(np.float32)
    labels = np.eye(num_classes, dtype=np.float32)[rng.integers(0, num_classes, batch_size)]
    for _ in range(warmup):
        model.train_on_batch(images, labels)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, labels)
    return steps * batch_size / (time.perf_counter() - start)


def measure_trainer_step(model=None, batch_size=16, image_size=256, num_classes=1000, steps=5, warmup=2):
    """Images/s of the step the train commands run (`training.loop.Trainer.train_step`: gradient
    clipped after the all-reduce, AdamW without decay on norms and biases, EMA update) on the
    same synthetic batches as `measure_train_step`, under the default strategy."""
    import tempfile

    import common  # benchmarks/common.py
    import keras

    from training.loop import build_optimizer
    from training.recipes import load_recipe

    if model is None:
        from keras_mobilevitv2 import MobileViTV2Config, MobileViTV2ImageClassifier

        model = MobileViTV2ImageClassifier(MobileViTV2Config(width_multiplier=0.5, num_labels=num_classes))
    recipe = load_recipe("imagenet1k_mobilevitv2")
    optimizer = build_optimizer(recipe["optimizer"], 1e-3, model)

    def loss(labels, logits):
        return keras.ops.mean(keras.losses.categorical_crossentropy(labels, logits, from_logits=True))

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (batch_size, image_size, image_size, 3)).astype(np.float32)
    labels = np.eye(num_classes, dtype=np.float32)[rng.integers(0, num_classes, batch_size)]
    with tempfile.TemporaryDirectory(prefix="mobilevitv2-trainer-") as model_dir:
        step = common.trainer_step(
            model, optimizer, loss, images, labels, model_dir,
            clipnorm=recipe["optimizer"]["global_clipnorm"], ema_decay=recipe["ema"]["decay"],
        )
        for _ in range(warmup):
            step()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return steps * batch_size / (time.perf_counter() - start)


# ------------------------------------------------------------------------------------------ main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="See the module docstring for what is timed.")
    parser.add_argument("--images", type=int, default=200, help="JPEGs to generate (default 200)")
    parser.add_argument("--batch-size", type=int, default=32, help="pipeline batch size (default 32)")
    parser.add_argument("--batches", type=int, default=20, help="batches timed per configuration (default 20)")
    parser.add_argument("--image-size", type=int, default=256, help="training crop size (default 256)")
    parser.add_argument(
        "--model-width", default="0.5", help="width of the MobileViTV2 classifier whose train step is timed, or 'none'"
    )
    parser.add_argument("--model-batch-size", type=int, default=16, help="batch of the timed train step (default 16)")
    parser.add_argument("--keep", help="generate the images into this folder and keep them")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from training.imagenet_data import ImageNetOptions, imagenet_folder_dataset

    root = args.keep or tempfile.mkdtemp(prefix="mobilevitv2-bench-")
    try:
        start = time.perf_counter()
        make_folder(root, args.images)
        print(f"generated {args.images} JPEGs in {time.perf_counter() - start:.1f}s under {root}")
        base = ImageNetOptions(batch_size=args.batch_size, image_size=args.image_size, num_classes=10, seed=0)
        configurations = [
            ("train: full recipe augmentation", base, True),
            ("train: without RandAugment", dataclasses.replace(base, rand_augment_num_ops=0), True),
            ("eval: decode + tf_preprocess 288/256", dataclasses.replace(base, eval_batch_size=args.batch_size), False),
        ]
        rows = []
        for name, options, training in configurations:
            dataset = imagenet_folder_dataset(root, "train", options, training=training)
            rows.append((name, args.batch_size, images_per_second(dataset, args.batch_size, args.batches)))
        if args.model_width.lower() != "none":
            import keras

            from keras_mobilevitv2 import MobileViTV2Config, MobileViTV2ImageClassifier

            width = float(args.model_width)
            model = MobileViTV2ImageClassifier(MobileViTV2Config(width_multiplier=width, num_labels=1000))
            rate = measure_train_step(model, args.model_batch_size, args.image_size)
            rows.append((f"model: width-{width:g} train step (AdamW)", args.model_batch_size, rate))
            keras.backend.clear_session()
            model = MobileViTV2ImageClassifier(MobileViTV2Config(width_multiplier=width, num_labels=1000))
            rate = measure_trainer_step(model, args.model_batch_size, args.image_size)
            rows.append((f"model: width-{width:g} training.loop step", args.model_batch_size, rate))
            keras.backend.clear_session()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print(f"\n{os.cpu_count()} CPU cores, TensorFlow {tf.__version__}, {args.image_size}x{args.image_size} crops")
    print(f"| {'what':<40} | {'batch':>5} | {'images/s':>9} |")
    print(f"|{'-' * 42}|{'-' * 7}|{'-' * 11}|")
    for name, batch, rate in rows:
        print(f"| {name:<40} | {batch:>5} | {rate:>9.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
