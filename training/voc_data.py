"""PASCAL VOC 2012 segmentation pipelines: `VOC2012/` -> (images, masks) batches.

    from training.voc_data import VOCOptions, voc_dataset

    train = voc_dataset("/data/VOCdevkit/VOC2012", "train_aug", VOCOptions(mask_dir="SegmentationClassAug"))
    val = voc_dataset("/data/VOCdevkit/VOC2012", "val", training=False)

Layout: `JPEGImages/<id>.jpg`, masks `<mask_dir>/<id>.png`, ids in
`ImageSets/Segmentation/<split>.txt` (or `split` is a path to such a list). `mask_dir` is
"SegmentationClass" (VOC's palette PNGs) or "SegmentationClassAug" (the SBD-augmented masks,
single-channel index PNGs, with a `train_aug` list of 10,582 ids).

Masks are read with PIL so class indices are exact: a palette ("P") PNG gives its palette
indices, a grayscale ("L") PNG its values (`tf.io.decode_png` would expand a palette PNG to its
RGB colours). An RGB mask is mapped back through the VOC colour map. 0 is background, 1..20 the
classes, 255 the "void" boundary the loss ignores.

Training (ml-cvnets' DeepLabV3 recipe): RandomShortSizeResize (short side 256..768, long side at
most 1024, bicubic; masks nearest), horizontal flip, a 512 x 512 random crop padded with 0 (image)
and 255 (mask) and re-drawn while one class covers >= 75% of the labelled pixels, Gaussian blur,
photometric distortion, rotation by up to 10 degrees (mask filled with 255), `normalize_pixels`.
Evaluation: full resolution, batch 1 (or `eval_batch_size` > 1: padded to the largest image of the
batch with 0 / 255).

Elements are `(images, masks)`: images float32 (B, H, W, 3) from `normalize_pixels`, masks uint8
(B, H, W). An unreadable image or mask is skipped and counted (`training.data.SkipCounter`); a mask
whose size differs from its image stops the pipeline with an error naming both files.
"""

import dataclasses
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from keras_mobilevitv2.preprocessing import PreprocessingConfig, decode_image, normalize_pixels
from training import augment
from training.data import (
    PipelineOptions,
    check_pair,
    check_range,
    decode_or_skip,
    finalize,
    keep_readable,
    options_from_recipe,
    with_seeds,
)

IGNORE_INDEX = 255
NUM_CLASSES = 21


def voc_colormap(n=256):
    """The PASCAL VOC palette, (n, 3) uint8: class i's colour interleaves the bits of i."""
    cmap = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def colors_to_indices(rgb, path="mask"):
    """An (H, W, 3) VOC colour mask -> (H, W) uint8 indices (0..20, 255 for (224, 224, 192))."""
    cmap = voc_colormap()
    codes = {tuple(int(v) for v in cmap[i]): i for i in list(range(NUM_CLASSES)) + [IGNORE_INDEX]}
    keys = rgb[..., 0].astype(np.int32) << 16 | rgb[..., 1].astype(np.int32) << 8 | rgb[..., 2].astype(np.int32)
    out = np.full(keys.shape, -1, np.int32)
    for (r, g, b), index in codes.items():
        out[keys == (r << 16 | g << 8 | b)] = index
    if (out < 0).any():
        bad = rgb[out < 0][0]
        raise ValueError(f"{path}: colour {tuple(int(v) for v in bad)} is not in the VOC colour map")
    return out.astype(np.uint8)


def read_mask(path):
    """A VOC mask PNG -> (H, W) uint8 class indices (palette, grayscale or VOC-coloured RGB)."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode in ("P", "L"):
            return np.array(image, dtype=np.uint8)
        if image.mode in ("RGB", "RGBA"):
            return colors_to_indices(np.array(image.convert("RGB")), path)
        raise ValueError(f"{path}: unsupported mask mode {image.mode!r} (expected P, L or RGB)")


def _read_mask_or_skip(path):
    """(mask, True), or (empty, False) when the file cannot be opened or decoded as an image."""
    from PIL import UnidentifiedImageError

    path = path.decode() if isinstance(path, bytes) else str(path)
    try:
        return read_mask(path), np.bool_(True)
    except (OSError, UnidentifiedImageError, SyntaxError):  # PIL raises these for corrupt files
        return np.zeros((0, 0), np.uint8), np.bool_(False)


def _check_sizes(image_shape, mask_shape, image_path, mask_path):
    """Raise naming both files when the mask's (H, W) differs from the image's."""
    if tuple(image_shape[:2]) != tuple(mask_shape[:2]):
        raise ValueError(
            f"mask {mask_path.decode()} is {mask_shape[0]}x{mask_shape[1]} (HxW) but image "
            f"{image_path.decode()} is {image_shape[0]}x{image_shape[1]}"
        )
    return np.bool_(True)


def _check_values(mask, mask_path, num_classes, ignore_index):
    """Raise naming the mask file when it holds a value that is neither a class nor the ignore index."""
    values = np.unique(mask)
    bad = values[(values >= num_classes) & (values != ignore_index)]
    if bad.size:
        raise ValueError(
            f"mask {mask_path.decode()} holds the value(s) {bad[:5].tolist()}, outside the {num_classes} "
            f"classes 0..{num_classes - 1} and the ignore index {ignore_index}"
        )
    return np.bool_(True)


@dataclasses.dataclass(frozen=True)
class VOCOptions(PipelineOptions):
    """VOC pipeline options; defaults are ml-cvnets' DeepLabV3-MobileViTV2 recipe (see
    PipelineOptions for batching, shuffling, sharding and determinism).

    Args:
        mask_dir: "SegmentationClass" or "SegmentationClassAug" (SBD).
        num_classes: the class count; a mask value >= it (other than `ignore_index`) stops the
            pipeline with an error naming the mask file.
        crop_size: side of the training crops.
        short_side_range, max_image_dim, interpolation: RandomShortSizeResize.
        horizontal_flip: flip with probability 0.5.
        seg_class_max_ratio: re-draw crops dominated by one class (None disables).
        gaussian_blur_prob: RandomGaussianBlur probability (0 disables).
        photometric_prob: probability of each PhotometricDistort step (0 disables).
        brightness, contrast, saturation, hue: PhotometricDistort ranges.
        rotate_degrees: maximum rotation (0 disables).
        ignore_index: mask value of padding and rotation fill.
        eval_batch_size: 1 keeps full-resolution images; more pads each batch.
        preprocessing: the `PreprocessingConfig` whose `normalize_pixels` scales the images.
        drop_remainder: drop the last partial training batch.
    """

    batch_size: int = 32
    shuffle_buffer: int = 1000
    mask_dir: str = "SegmentationClass"
    num_classes: int = NUM_CLASSES
    crop_size: int = 512
    short_side_range: tuple = (256, 768)
    max_image_dim: int = 1024
    interpolation: str = "bicubic"
    horizontal_flip: bool = True
    seg_class_max_ratio: Optional[float] = 0.75
    gaussian_blur_prob: float = 0.5
    photometric_prob: float = 0.5
    brightness: tuple = (0.875, 1.125)
    contrast: tuple = (0.5, 1.5)
    saturation: tuple = (0.5, 1.5)
    hue: tuple = (-0.05, 0.05)
    rotate_degrees: float = 10.0
    ignore_index: int = IGNORE_INDEX
    eval_batch_size: int = 1
    preprocessing: Optional[PreprocessingConfig] = None
    drop_remainder: bool = True

    def __post_init__(self):
        super().__post_init__()
        for name in ("crop_size", "max_image_dim", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, received {name}={value!r}")
        check_pair("short_side_range", self.short_side_range, low=1)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in self.short_side_range):
            raise ValueError(f"short_side_range must hold ints, received {self.short_side_range!r}")
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"interpolation must be bilinear, bicubic or nearest, received {self.interpolation!r}")
        if self.seg_class_max_ratio is not None:
            check_range("seg_class_max_ratio", self.seg_class_max_ratio, 0.0, 1.0)
        for name in ("gaussian_blur_prob", "photometric_prob"):
            check_range(name, getattr(self, name), 0.0, 1.0)
        for name in ("brightness", "contrast", "saturation"):
            check_pair(name, getattr(self, name))
        check_pair("hue", self.hue, low=-0.5)
        if self.hue[1] > 0.5:
            raise ValueError(f"hue must lie in [-0.5, 0.5], received {self.hue!r}")
        check_range("rotate_degrees", self.rotate_degrees, 0.0, 180.0)
        check_range("ignore_index", self.ignore_index, 0, 255)
        if not isinstance(self.ignore_index, int):
            raise ValueError(f"ignore_index must be an int, received {self.ignore_index!r}")
        if not isinstance(self.mask_dir, str) or not self.mask_dir:
            raise ValueError(f"mask_dir must be a folder name, received {self.mask_dir!r}")
        if self.preprocessing is not None and not isinstance(self.preprocessing, PreprocessingConfig):
            raise ValueError(f"preprocessing must be a PreprocessingConfig or None, received {type(self.preprocessing).__name__}")

    @property
    def preprocessing_config(self):
        return self.preprocessing or PreprocessingConfig()

    @classmethod
    def from_recipe(cls, recipe, num_workers=1, worker_index=0, **changes):
        """Options from a recipe (`training.recipes.load_recipe`): its `data` fields, the global
        batch divided by `num_workers`, the model preset's pixel scaling; `changes` override."""
        preset = recipe.get("model", {}).get("preset")
        if preset:
            changes.setdefault("preprocessing", PreprocessingConfig.from_preset(preset))
        not_options = {"dataset", "train_split", "eval_split", "global_batch_size", "use_coco_data"}
        if recipe["data"].get("use_coco_data"):
            raise ValueError("data.use_coco_data: training on COCO images mapped to VOC classes is not supported")
        return options_from_recipe(cls, recipe, num_workers, worker_index, not_options, **changes)


def list_voc_split(root, split, mask_dir="SegmentationClass"):
    """(image paths, mask paths) of a split name (ImageSets/Segmentation/<split>.txt) or list file."""
    root = os.fspath(root)
    list_file = os.fspath(split)
    if not os.path.isfile(list_file):
        list_file = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"no split list {list_file} (split={split!r})")
    with open(list_file, encoding="utf-8") as f:
        ids = [line.split()[0] for line in f if line.strip()]
    if not ids:
        raise ValueError(f"{list_file} lists no images")
    images = [os.path.join(root, "JPEGImages", i + ".jpg") for i in ids]
    masks = [os.path.join(root, mask_dir, i + ".png") for i in ids]
    return images, masks


def _augment_train(image, mask, seed, options):
    """(H, W, 3) uint8 image, (H, W) uint8 mask -> (crop, crop, 3) float32 [0, 255], (crop, crop) uint8."""
    seeds = augment.split_seed(seed, 6)
    image = tf.cast(image, tf.float32)
    image, mask = augment.random_short_side_resize(
        image, mask, seeds[0], options.short_side_range, options.max_image_dim, options.interpolation
    )
    if options.horizontal_flip:
        image, mask = augment.random_flip_left_right(image, seeds[1], mask)
    image, mask = augment.random_crop_with_mask(
        image, mask, seeds[2], options.crop_size, options.ignore_index, options.seg_class_max_ratio
    )
    if options.gaussian_blur_prob > 0:
        image = augment.random_gaussian_blur(image, seeds[3], options.gaussian_blur_prob)
    if options.photometric_prob > 0:
        image = augment.photometric_distort(
            image, seeds[4], options.photometric_prob, options.brightness, options.contrast, options.saturation, options.hue
        )
    if options.rotate_degrees > 0:
        image, mask = augment.random_rotate(image, mask, seeds[5], options.rotate_degrees, options.ignore_index)
    return image, mask


def voc_dataset(root, split, options=None, training=None, skip_counter=None):
    """Batches of (images, masks) from a VOC2012 folder.

    Args:
        root: the VOC2012 folder (holding JPEGImages/, SegmentationClass/, ImageSets/).
        split: "train", "val", "train_aug", ... or the path of an id list.
        options: `VOCOptions` (default: ml-cvnets' recipe, VOC's palette masks).
        training: augment and shuffle (default: split is not "val").
        skip_counter: a `training.data.SkipCounter` counting unreadable images and masks.
    """
    options = options or VOCOptions()
    training = os.path.basename(os.fspath(split)).split(".")[0] != "val" if training is None else training
    images, masks = list_voc_split(root, split, options.mask_dir)
    prep = options.preprocessing_config
    parallel = options.num_parallel_calls

    examples = tf.data.Dataset.from_tensor_slices((images, masks))
    examples = examples.shard(options.num_workers, options.worker_index)
    if training:
        buffer = min(options.shuffle_buffer, -(-len(images) // options.num_workers)) if options.shuffle_buffer else 1
        examples = examples.shuffle(max(buffer, 1), seed=options.seed, reshuffle_each_iteration=True)
    examples = with_seeds(examples, None if options.seed is None else options.seed + 1)

    def load_mask(image, image_ok, example):
        image_path, mask_path, seed = example
        mask, mask_ok = tf.numpy_function(_read_mask_or_skip, [mask_path], (tf.uint8, tf.bool), stateful=False)
        mask = tf.ensure_shape(mask, [None, None])
        return image, mask, image_path, mask_path, seed, image_ok & tf.ensure_shape(mask_ok, [])

    def check(image, mask, image_path, mask_path, seed, ok):
        # stateful: a stateless op whose output is only a control input may be pruned.
        checked = tf.numpy_function(
            _check_sizes, [tf.shape(image), tf.shape(mask), image_path, mask_path], tf.bool, stateful=True
        )
        values = tf.numpy_function(
            _check_values, [mask, mask_path, options.num_classes, options.ignore_index], tf.bool, stateful=True
        )
        with tf.control_dependencies([checked, values]):
            return tf.identity(image), tf.identity(mask), seed

    def finish(image, mask, seed):
        if training:
            image, mask = _augment_train(image, mask, seed, options)
        return normalize_pixels(image, prep), mask

    ds = decode_or_skip(examples, lambda image_path, mask_path, seed: decode_image(tf.io.read_file(image_path)), parallel)
    ds = ds.map(load_mask, num_parallel_calls=parallel)
    ds = ds.filter(lambda image, mask, ip, mp, seed, ok: keep_readable(ok, tf.strings.join([ip, " / ", mp]), skip_counter, "image or mask"))
    ds = ds.map(check, num_parallel_calls=parallel)
    ds = ds.map(finish, num_parallel_calls=parallel)
    if training:
        ds = ds.batch(options.batch_size, drop_remainder=options.drop_remainder)
    elif options.eval_batch_size == 1:
        ds = ds.batch(1)
    else:
        ds = ds.padded_batch(
            options.eval_batch_size,
            padding_values=(tf.constant(0.0), tf.constant(options.ignore_index, tf.uint8)),
        )
    return finalize(ds, options, training)
