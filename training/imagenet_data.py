"""ImageNet input pipelines: an ImageNet-style folder or TFRecord shards -> batches for `fit`.

    from training.imagenet_data import ImageNetOptions, imagenet_folder_dataset
    from training.data import SkipCounter

    skipped = SkipCounter()
    options = ImageNetOptions(batch_size=128, seed=0)
    train = imagenet_folder_dataset("/data/imagenet", "train", options, skip_counter=skipped)
    val = imagenet_folder_dataset("/data/imagenet", "val", options, training=False)

Sources:
- a folder `root/<split>/<wnid>/*.JPEG`; class indices follow the sorted folder names (0-based).
  A flat folder (`root/val/*.JPEG`) takes its labels from a label file, see `read_label_file`.
- TFRecord shards of `tf.train.Example`s with `image/encoded` (bytes) and
  `image/class/label` (int64), optionally `image/filename`. Many ImageNet converters (the TF
  models / TPU `imagenet_to_gcs.py` scripts) store labels 1..1000 with 0 meaning background:
  set `label_offset=1` for those; the default 0 reads labels as stored.

Training (ml-cvnets' MobileViTV2 recipe): RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3, bicubic,
decoding only the crop window of a JPEG) to `image_size`, horizontal flip, RandAugment (2 ops,
magnitude 9), `normalize_pixels`, RandomErasing (p=0.25), labels one-hot with label smoothing
0.1, then per batch MixUp (alpha 0.2) or CutMix (alpha 1.0). Train the model with a plain
categorical cross-entropy (no second label smoothing in the loss).

Evaluation: `tf_preprocess` (resize the shortest edge to 288, centre crop 256, normalise), the
same code the exported model uses. Labels one-hot (no smoothing), so `fit(validation_data=...)`
works with the training loss.

Elements are `(images, labels)`: images float32 (B, S, S, 3) as `normalize_pixels` makes them
(BGR in [0, 1] by default), labels float32 (B, num_classes).
"""

import dataclasses
import os
import re
from typing import Optional

import tensorflow as tf

from keras_mobilevitv2.preprocessing import (
    PreprocessingConfig,
    check_image_size,
    decode_image,
    normalize_pixels,
    tf_preprocess,
)
from training import augment
from training.data import (
    AUTOTUNE,
    PipelineOptions,
    check_pair,
    check_range,
    decode_or_skip,
    finalize,
    keep_readable,
    options_from_recipe,
    with_seeds,
)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp")
_WNID = re.compile(r"^n\d{8}$")
_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclasses.dataclass(frozen=True)
class ImageNetOptions(PipelineOptions):
    """ImageNet pipeline options; defaults are ml-cvnets' MobileViTV2 recipe (see PipelineOptions
    for batching, shuffling, sharding and determinism).

    Args:
        image_size: side of the training crops.
        num_classes: length of the label vectors.
        label_offset: subtracted from every stored label (1 for TFRecords with labels 1..1000);
            a label outside [0, num_classes) after it is an error naming the file.
        random_resized_crop_scale, random_resized_crop_ratio: RandomResizedCrop's area fraction
            and aspect-ratio ranges.
        interpolation: resizing of the training crops ("bicubic", antialiased like PIL).
        horizontal_flip: flip with probability 0.5.
        rand_augment_num_ops: RandAugment ops per image (0 disables RandAugment).
        rand_augment_magnitude, rand_augment_num_magnitude_bins: RandAugment strength.
        rand_augment_interpolation: resampling of RandAugment's geometric ops.
        random_erase_prob: RandomErasing probability (0 disables).
        mixup_alpha, cutmix_alpha: Beta parameters (0 disables that method).
        mix_switch_prob: probability of CutMix when both are enabled (else MixUp).
        label_smoothing: spread over all classes in the training labels.
        eval_batch_size: batch size of evaluation (default: batch_size).
        preprocessing: the `PreprocessingConfig` of evaluation and of `normalize_pixels`
            (default: Apple's 256 checkpoints: shortest edge 288, crop 256, BGR in [0, 1]).
        drop_remainder: drop the last partial training batch (evaluation keeps it).
    """

    batch_size: int = 128
    image_size: int = 256
    num_classes: int = 1000
    label_offset: int = 0
    random_resized_crop_scale: tuple = (0.08, 1.0)
    random_resized_crop_ratio: tuple = (3 / 4, 4 / 3)
    interpolation: str = "bicubic"
    horizontal_flip: bool = True
    rand_augment_num_ops: int = 2
    rand_augment_magnitude: int = 9
    rand_augment_num_magnitude_bins: int = 31
    rand_augment_interpolation: str = "bilinear"
    random_erase_prob: float = 0.25
    mixup_alpha: float = 0.2
    cutmix_alpha: float = 1.0
    mix_switch_prob: float = 0.5
    label_smoothing: float = 0.1
    eval_batch_size: Optional[int] = None
    preprocessing: Optional[PreprocessingConfig] = None
    drop_remainder: bool = True

    def __post_init__(self):
        super().__post_init__()
        for name in ("image_size", "num_classes", "rand_augment_num_magnitude_bins"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, received {name}={value!r}")
        for name in ("label_offset", "rand_augment_num_ops"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, received {name}={value!r}")
        if self.eval_batch_size is not None and (
            not isinstance(self.eval_batch_size, int) or isinstance(self.eval_batch_size, bool) or self.eval_batch_size <= 0
        ):
            raise ValueError(f"eval_batch_size must be a positive int or None, received eval_batch_size={self.eval_batch_size!r}")
        check_pair("random_resized_crop_scale", self.random_resized_crop_scale)
        if self.random_resized_crop_scale[1] > 1 or self.random_resized_crop_scale[1] <= 0:
            raise ValueError(f"random_resized_crop_scale must lie in (0, 1], received {self.random_resized_crop_scale!r}")
        check_pair("random_resized_crop_ratio", self.random_resized_crop_ratio)
        if self.random_resized_crop_ratio[0] <= 0:
            raise ValueError(f"random_resized_crop_ratio must be positive, received {self.random_resized_crop_ratio!r}")
        for name in ("interpolation", "rand_augment_interpolation"):
            if getattr(self, name) not in _INTERPOLATIONS:
                raise ValueError(f"{name} must be one of {_INTERPOLATIONS}, received {name}={getattr(self, name)!r}")
        check_range("rand_augment_magnitude", self.rand_augment_magnitude, 0, self.rand_augment_num_magnitude_bins, False)
        for name in ("random_erase_prob", "mix_switch_prob", "label_smoothing"):
            check_range(name, getattr(self, name), 0.0, 1.0)
        for name in ("mixup_alpha", "cutmix_alpha"):
            check_range(name, getattr(self, name), 0.0, float("inf"))
        if not isinstance(self.horizontal_flip, bool) or not isinstance(self.drop_remainder, bool):
            raise ValueError(
                f"horizontal_flip and drop_remainder must be bools, received {self.horizontal_flip!r}, {self.drop_remainder!r}"
            )
        if self.preprocessing is not None and not isinstance(self.preprocessing, PreprocessingConfig):
            raise ValueError(f"preprocessing must be a PreprocessingConfig or None, received {type(self.preprocessing).__name__}")

    @property
    def preprocessing_config(self):
        return self.preprocessing or PreprocessingConfig()

    @classmethod
    def from_recipe(cls, recipe, num_workers=1, worker_index=0, **changes):
        """Options from a recipe (`training.recipes.load_recipe`): its `data` fields, the global
        batch divided by `num_workers`, evaluation resizing on top of the model preset's
        preprocessing; `changes` override any field."""
        data = recipe["data"]
        preset = recipe.get("model", {}).get("preset")
        prep = PreprocessingConfig.from_preset(preset) if preset else PreprocessingConfig()
        prep = dataclasses.replace(
            prep,
            shortest_edge=data.get("eval_shortest_edge", prep.shortest_edge),
            crop_height=data.get("eval_crop_size", prep.crop_height),
            crop_width=data.get("eval_crop_size", prep.crop_width),
        )
        changes.setdefault("preprocessing", prep)
        not_options = {"dataset", "train_split", "eval_split", "global_batch_size", "eval_shortest_edge", "eval_crop_size"}
        return options_from_recipe(cls, recipe, num_workers, worker_index, not_options, **changes)


# --------------------------------------------------------------------------------- file lists
def _is_image_file(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_class_folders(directory):
    """`directory/<class>/<image>` -> (paths, labels, class_names); labels index sorted class names."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no such image folder: {directory}")
    class_names = sorted(e.name for e in os.scandir(directory) if e.is_dir())
    if not class_names:
        raise ValueError(f"{directory} has no class sub-folders (expected {directory}/<wnid>/*.JPEG)")
    paths, labels = [], []
    for index, name in enumerate(class_names):
        files = sorted(f for f in os.listdir(os.path.join(directory, name)) if _is_image_file(f))
        paths.extend(os.path.join(directory, name, f) for f in files)
        labels.extend([index] * len(files))
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {directory}/<class>/")
    return paths, labels, class_names


def read_label_file(label_file, class_names=None, label_offset=0):
    """A label file -> {file stem: 0-based label}.

    One example per line: `<filename>[,| ]<label> ...`, where the filename may omit its
    extension and the label is an integer (`label_offset` is subtracted) or a class folder name
    such as a WordNet id (looked up in `class_names`). Only the first token after the filename
    is read, so Kaggle's `LOC_val_solution.csv` (`ImageId,PredictionString`) works as it is; a
    first line that does not parse is taken as a header.
    """
    label_file = os.fspath(label_file)
    index_of = {name: i for i, name in enumerate(class_names or [])}
    labels = {}
    with open(label_file, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            name, _, rest = line.partition(",") if "," in line else line.partition(" ")
            token = rest.strip().split()[0] if rest.strip() else ""
            if re.fullmatch(r"-?\d+", token):
                label = int(token) - label_offset
            elif token in index_of:
                label = index_of[token]
            elif line_number == 1:
                continue  # header
            elif _WNID.match(token):
                raise ValueError(f"{label_file}:{line_number}: class {token!r} is not one of the {len(index_of)} known classes")
            else:
                raise ValueError(f"{label_file}:{line_number}: cannot read a label from {line!r}")
            labels[os.path.splitext(os.path.basename(name.strip()))[0]] = label
    if not labels:
        raise ValueError(f"{label_file} holds no labels")
    return labels


def list_flat_folder(directory, label_file, class_names=None, label_offset=0):
    """`directory/<image>` with labels from `label_file` (see `read_label_file`) -> (paths, labels)."""
    directory = os.fspath(directory)
    labels_by_stem = read_label_file(label_file, class_names, label_offset)
    files = sorted(f for f in os.listdir(directory) if _is_image_file(f))
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {directory}")
    missing = [f for f in files if os.path.splitext(f)[0] not in labels_by_stem]
    if missing:
        raise ValueError(
            f"{len(missing)} images in {directory} have no label in {label_file}, e.g. {', '.join(missing[:3])}"
        )
    return [os.path.join(directory, f) for f in files], [labels_by_stem[os.path.splitext(f)[0]] for f in files]


# --------------------------------------------------------------------------------- per example
def _check_label(label, name, num_classes):
    """`label`, after asserting 0 <= label < num_classes (the error names the file)."""
    in_range = (label >= 0) & (label < num_classes)
    message = f"ImageNet label outside [0, num_classes={num_classes}) (is label_offset right?): file, label ="
    with tf.control_dependencies([tf.debugging.Assert(in_range, [message, name, label])]):
        return tf.identity(label)


def _decode_crop_resize(data, seed, options):
    """Encoded bytes -> RandomResizedCrop'ed (S, S, 3) uint8; a JPEG decodes only the window."""

    def window(height, width):
        return augment.random_resized_crop_window(
            height, width, seed, options.random_resized_crop_scale, options.random_resized_crop_ratio
        )

    def jpeg():
        # The decoded-size limit from the header, as decode_image applies it (the crop may be the whole image).
        with tf.control_dependencies([check_image_size(data)]):
            shape = tf.image.extract_jpeg_shape(data)
        top, left, h, w = window(shape[0], shape[1])
        return tf.image.decode_and_crop_jpeg(data, tf.stack([top, left, h, w]), channels=3, dct_method="INTEGER_ACCURATE")

    def other():
        image = decode_image(data)
        shape = tf.shape(image)
        top, left, h, w = window(shape[0], shape[1])
        return image[top : top + h, left : left + w]

    crop = tf.cond(tf.io.is_jpeg(data), jpeg, other)
    size = [options.image_size, options.image_size]
    image = tf.image.resize(crop, size, method=options.interpolation, antialias=options.interpolation != "nearest")
    image = tf.cast(tf.clip_by_value(tf.floor(image + 0.5), 0.0, 255.0), tf.uint8)
    return tf.ensure_shape(image, [options.image_size, options.image_size, 3])


def _read(source, from_files):
    return tf.io.read_file(source) if from_files else source


def _build(examples, training, options, from_files, skip_counter):
    """(source, label, name) examples, already sharded and shuffled -> batches."""
    prep = options.preprocessing_config
    parallel = options.num_parallel_calls

    if training:
        def decode(source, label, name, seed):
            s_crop, _ = augment.split_seed(seed, 2)
            return _decode_crop_resize(_read(source, from_files), s_crop, options)
    else:
        def decode(source, label, name, seed):
            return decode_image(_read(source, from_files))

    def augment_one(image, label, name, seed):
        label = _check_label(label, name, options.num_classes)
        if not training:
            return tf_preprocess(image, prep), tf.one_hot(label, options.num_classes, dtype=tf.float32)
        s_flip, s_ra, s_erase = augment.split_seed(seed, 3)
        image = tf.ensure_shape(image, [options.image_size, options.image_size, 3])
        if options.horizontal_flip:
            image = augment.random_flip_left_right(image, s_flip)
        if options.rand_augment_num_ops > 0:
            image = augment.rand_augment(
                image,
                s_ra,
                options.rand_augment_num_ops,
                options.rand_augment_magnitude,
                options.rand_augment_num_magnitude_bins,
                options.rand_augment_interpolation.upper(),
            )
        image = normalize_pixels(image, prep)
        if options.random_erase_prob > 0:
            image = augment.random_erasing(image, s_erase, options.random_erase_prob)
        return image, augment.smooth_labels(label, options.num_classes, options.label_smoothing)

    ds = with_seeds(examples, None if options.seed is None else options.seed + 1)
    ds = decode_or_skip(ds, decode, parallel)
    ds = ds.filter(lambda image, ok, example: keep_readable(ok, example[2], skip_counter))
    ds = ds.map(
        lambda image, ok, example: augment_one(image, example[1], example[2], augment.split_seed(example[3], 2)[1]),
        num_parallel_calls=parallel,
    )
    if training:
        ds = ds.batch(options.batch_size, drop_remainder=options.drop_remainder)
        if options.mixup_alpha > 0 or options.cutmix_alpha > 0:
            ds = with_seeds(ds, None if options.seed is None else options.seed + 2)
            ds = ds.map(
                lambda images, labels, seed: augment.mix_batch(
                    images, labels, seed, options.mixup_alpha, options.cutmix_alpha, options.mix_switch_prob
                ),
                num_parallel_calls=parallel,
            )
    else:
        ds = ds.batch(options.eval_batch_size or options.batch_size)
    return finalize(ds, options, training)


# -------------------------------------------------------------------------------- public builders
def imagenet_folder_dataset(root, split, options=None, training=None, label_file=None, class_names=None, skip_counter=None):
    """Batches from `root/<split>/<class>/*` (or a flat `root/<split>/*` with `label_file`).

    Args:
        root: the ImageNet folder; `split` is the sub-folder ("train", "val").
        options: `ImageNetOptions` (default: the ml-cvnets recipe).
        training: augment and shuffle (default: split == "train").
        label_file: labels of a flat folder (see `read_label_file`).
        class_names: class order for wnid labels in `label_file` (default: the sorted folder
            names of `root/train` if it exists).
        skip_counter: a `training.data.SkipCounter` counting unreadable images (they are skipped
            and logged either way).
    """
    options = options or ImageNetOptions()
    training = split == "train" if training is None else training
    directory = os.path.join(os.fspath(root), split)
    if label_file is None:
        paths, labels, _ = list_class_folders(directory)
    else:
        if class_names is None and os.path.isdir(os.path.join(os.fspath(root), "train")):
            class_names = list_class_folders(os.path.join(os.fspath(root), "train"))[2]
        paths, labels = list_flat_folder(directory, label_file, class_names, options.label_offset)
    return dataset_from_files(paths, labels, options, training, skip_counter)


def dataset_from_files(paths, labels, options=None, training=True, skip_counter=None):
    """Batches from parallel lists of image paths and 0-based labels."""
    options = options or ImageNetOptions()
    if len(paths) != len(labels):
        raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
    paths = [os.fspath(p) for p in paths]
    examples = tf.data.Dataset.from_tensor_slices((paths, tf.constant(labels, tf.int32), paths))
    examples = examples.shard(options.num_workers, options.worker_index)
    if training:
        # File names are small: shuffle all of them, every epoch.
        buffer = -(-len(paths) // options.num_workers)
        examples = examples.shuffle(buffer, seed=options.seed, reshuffle_each_iteration=True)
    return _build(examples, training, options, from_files=True, skip_counter=skip_counter)


TFRECORD_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
}


def _expand_files(file_pattern):
    patterns = [file_pattern] if isinstance(file_pattern, (str, os.PathLike)) else list(file_pattern)
    files = []
    for pattern in patterns:
        matches = sorted(tf.io.gfile.glob(os.fspath(pattern)))
        if not matches:
            raise FileNotFoundError(f"no TFRecord files match {os.fspath(pattern)}")
        files.extend(matches)
    return files


def imagenet_tfrecord_dataset(file_pattern, training, options=None, skip_counter=None):
    """Batches from TFRecord shards (a glob, a path or a list of either).

    Each record is a `tf.train.Example` with `image/encoded` and `image/class/label`
    (`label - options.label_offset` is the 0-based class); `image/filename`, if present, names
    the example in error and skip messages. With several workers, each reads
    `files[worker_index::num_workers]` when there are at least as many files as workers,
    otherwise every worker reads all files and keeps its share of records.
    """
    options = options or ImageNetOptions()
    files = _expand_files(file_pattern)
    shard_files = len(files) >= options.num_workers
    file_ds = tf.data.Dataset.from_tensor_slices(files)
    if shard_files:
        file_ds = file_ds.shard(options.num_workers, options.worker_index)
    if training:
        file_ds = file_ds.shuffle(len(files), seed=options.seed, reshuffle_each_iteration=True)
    records = file_ds.interleave(
        tf.data.TFRecordDataset, cycle_length=min(len(files), 8), num_parallel_calls=AUTOTUNE
    )
    if not shard_files:
        records = records.shard(options.num_workers, options.worker_index)
    if training and options.shuffle_buffer > 1:
        records = records.shuffle(options.shuffle_buffer, seed=options.seed, reshuffle_each_iteration=True)

    def parse(record):
        features = tf.io.parse_single_example(record, TFRECORD_FEATURES)
        label = tf.cast(features["image/class/label"], tf.int32) - options.label_offset
        return features["image/encoded"], label, features["image/filename"]

    examples = records.map(parse, num_parallel_calls=AUTOTUNE)
    return _build(examples, training, options, from_files=False, skip_counter=skip_counter)


def write_tfrecords(path, examples):
    """Write (encoded image bytes, stored label, filename) examples to one TFRecord file.

    The format `imagenet_tfrecord_dataset` reads (for tests, benchmarks and small conversions).
    """
    with tf.io.TFRecordWriter(os.fspath(path)) as writer:
        for data, label, filename in examples:
            feature = {
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
                "image/filename": tf.train.Feature(bytes_list=tf.train.BytesList(value=[filename.encode()])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
