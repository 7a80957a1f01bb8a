"""Training augmentations as TF ops, for the tf.data pipelines of `imagenet_data` and `voc_data`.

Every random op takes a `seed`: a shape-(2,) integer tensor for TF's stateless random ops, so an
augmentation is a pure function of (input, seed). The pipelines give each element its own seed
from `tf.data.Dataset.random(seed)`, which makes a seeded pipeline reproducible and an unseeded
one different on every run.

The semantics follow Apple's ml-cvnets, which uses torchvision's transforms:

- classification (per image): RandomResizedCrop (`random_resized_crop_window`), horizontal flip,
  RandAugment (`rand_augment`, torchvision's 14-op set and magnitude bins), RandomErasing
  (`random_erasing`); per batch: MixUp or CutMix (`mix_batch`), one of them per batch.
- segmentation (image and mask together): RandomShortSizeResize, RandomCrop padded with the
  ignore index, RandomGaussianBlur, PhotometricDistort, RandomRotate.

Images in the colour ops are float32 in [0, 255] (uint8 in, uint8 out for RandAugment); masks
are uint8 class indices.
"""

import math

import tensorflow as tf

# torchvision's RandAugment op set, in its order; `rand_augment` draws uniformly from it.
RAND_AUGMENT_OPS = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)

# torchvision's grayscale weights (ITU-R 601-2 luma), used by Color, Contrast and saturation.
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


# ----------------------------------------------------------------------------------- random draws
def split_seed(seed, num):
    """`num` independent (2,) seeds from one."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def _uniform(seed, minval=0.0, maxval=1.0, shape=()):
    return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval, dtype=tf.float32)


def _randint(seed, low, high):
    """A uniform int32 in [low, high) (high > low; tensors allowed)."""
    return tf.random.stateless_uniform([], seed, minval=low, maxval=high, dtype=tf.int32)


def sample_beta(seed, alpha):
    """One draw of Beta(alpha, alpha), as the ratio of two Gamma(alpha) draws."""
    gammas = tf.random.stateless_gamma([2], seed, alpha=alpha, dtype=tf.float32)
    return gammas[0] / tf.maximum(gammas[0] + gammas[1], 1e-12)


# ----------------------------------------------------------------------------- pixel-level helpers
def _to_uint8(image):
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _grayscale(image):
    """(H, W, 3) float -> (H, W, 1)."""
    return tf.reduce_sum(image * tf.constant(_GRAY_WEIGHTS, tf.float32), axis=-1, keepdims=True)


def _blend(image, degenerate, factor):
    """torchvision's `_blend`: factor * image + (1 - factor) * degenerate, clipped to [0, 255]."""
    return tf.clip_by_value(factor * image + (1.0 - factor) * degenerate, 0.0, 255.0)


def adjust_brightness(image, factor):
    return _blend(image, tf.zeros_like(image), factor)


def adjust_saturation(image, factor):
    return _blend(image, _grayscale(image), factor)


def adjust_contrast(image, factor):
    return _blend(image, tf.reduce_mean(_grayscale(image)), factor)


def adjust_sharpness(image, factor):
    """Blend with the image smoothed by PIL's SMOOTH kernel; the one-pixel border stays as is."""
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])  # (3, 3, C, 1) depthwise
    smooth = tf.round(tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0])
    degenerate = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    border = tf.pad(tf.ones_like(smooth[..., :1]), [[1, 1], [1, 1], [0, 0]])  # 1 inside, 0 on the border
    degenerate = border * degenerate + (1.0 - border) * image
    return _blend(image, degenerate, factor)


def adjust_hue(image, delta):
    """Rotate hue by `delta` (a fraction of the colour circle, in [-0.5, 0.5])."""
    return tf.image.adjust_hue(image / 255.0, delta) * 255.0


def posterize(image_uint8, bits):
    """Keep the `bits` high bits of each channel."""
    shift = tf.cast(8 - bits, tf.uint8)
    mask = tf.bitwise.left_shift(tf.constant(255, tf.uint8), shift)
    return tf.bitwise.bitwise_and(image_uint8, mask)


def solarize(image, threshold):
    return tf.where(image >= threshold, 255.0 - image, image)


def autocontrast(image):
    """Stretch each channel to [0, 255]; a constant channel is left as it is."""
    low = tf.reduce_min(image, axis=[0, 1], keepdims=True)
    high = tf.reduce_max(image, axis=[0, 1], keepdims=True)
    flat = high <= low
    scale = tf.where(flat, 1.0, 255.0 / tf.where(flat, 1.0, high - low))
    low = tf.where(flat, 0.0, low)
    return tf.clip_by_value((image - low) * scale, 0.0, 255.0)


def _equalize_channel(channel):
    """PIL / torchvision histogram equalisation of one (H, W) int32 channel."""
    hist = tf.math.bincount(tf.reshape(channel, [-1]), minlength=256, maxlength=256)
    nonzero = tf.boolean_mask(hist, hist > 0)
    step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255

    def equalized():
        safe_step = tf.maximum(step, 1)
        lut = (tf.cumsum(hist) + safe_step // 2) // safe_step
        lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], axis=0), 0, 255)
        return tf.gather(lut, channel)

    return tf.cond(step > 0, equalized, lambda: channel)


def equalize(image):
    channels = tf.cast(tf.round(image), tf.int32)
    out = [_equalize_channel(channels[..., c]) for c in range(3)]
    return tf.cast(tf.stack(out, axis=-1), tf.float32)


# ------------------------------------------------------------------------------------- geometry
def projective_transform(image, matrix, interpolation="BILINEAR", fill_value=0.0):
    """Warp (H, W, C) with an output->input matrix [a0, a1, a2, b0, b1, b2, 0, 0] (x = column).

    The output pixel (x, y) samples the input at (a0 x + a1 y + a2, b0 x + b1 y + b2); pixels
    that fall outside take `fill_value`. Float32 in, float32 out.
    """
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=tf.reshape(tf.cast(matrix, tf.float32), [1, 8]),
        output_shape=tf.shape(image)[:2],
        fill_value=tf.cast(fill_value, tf.float32),
        interpolation=interpolation,
        fill_mode="CONSTANT",
    )
    return out[0]


def _rotation_matrix(height, width, degrees):
    """Output->input matrix rotating the content by `degrees` about the image centre."""
    theta = degrees * (math.pi / 180.0)
    cos, sin = tf.cos(theta), tf.sin(theta)
    cx = (tf.cast(width, tf.float32) - 1.0) / 2.0
    cy = (tf.cast(height, tf.float32) - 1.0) / 2.0
    return tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])


def _affine(a0, a1, a2, b0, b1, b2):
    return tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0])


# ------------------------------------------------------------------------------ classification
def random_resized_crop_window(height, width, seed, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts=10):
    """torchvision's `RandomResizedCrop.get_params`: (top, left, crop_height, crop_width), int32.

    Up to `attempts` draws of an area fraction in `scale` and a log-uniform aspect ratio in
    `ratio`; the first that fits the image wins, otherwise a centre crop with the aspect ratio
    clamped to `ratio`.
    """
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    s_area, s_ratio, s_top, s_left = split_seed(seed, 4)
    target_area = h * w * _uniform(s_area, scale[0], scale[1], [attempts])
    aspect = tf.exp(_uniform(s_ratio, math.log(ratio[0]), math.log(ratio[1]), [attempts]))
    crop_w = tf.round(tf.sqrt(target_area * aspect))
    crop_h = tf.round(tf.sqrt(target_area / aspect))
    fits = (crop_w > 0) & (crop_h > 0) & (crop_w <= w) & (crop_h <= h)
    tops = tf.floor(_uniform(s_top, shape=[attempts]) * (h - crop_h + 1.0))
    lefts = tf.floor(_uniform(s_left, shape=[attempts]) * (w - crop_w + 1.0))
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)

    # Fallback: the whole image, its aspect ratio clamped to `ratio`, centred.
    in_ratio = w / h
    fb_w = tf.where(in_ratio < ratio[0], w, tf.where(in_ratio > ratio[1], tf.round(h * ratio[1]), w))
    fb_h = tf.where(in_ratio < ratio[0], tf.round(w / ratio[0]), h)
    fb_h = tf.minimum(fb_h, h)
    fb_w = tf.minimum(fb_w, w)
    window = tf.where(
        tf.reduce_any(fits),
        tf.stack([tops[first], lefts[first], crop_h[first], crop_w[first]]),
        tf.stack([tf.floor((h - fb_h) / 2.0), tf.floor((w - fb_w) / 2.0), fb_h, fb_w]),
    )
    return tf.unstack(tf.cast(window, tf.int32))


def random_flip_left_right(image, seed, mask=None):
    """Flip with probability 0.5 (the mask, if given, with the image)."""
    flip = _uniform(seed) < 0.5
    image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
    if mask is None:
        return image
    return image, tf.cond(flip, lambda: tf.reverse(mask, [1]), lambda: mask)


def rand_augment_magnitudes(magnitude, num_magnitude_bins, height, width):
    """The op strengths of torchvision's RandAugment at `magnitude` (an index into the bins).

    Returns {op: (value, signed)}; a signed value gets a random sign per use.
    """
    if not 0 <= magnitude < num_magnitude_bins:
        raise ValueError(
            f"magnitude must be in [0, num_magnitude_bins={num_magnitude_bins}), received magnitude={magnitude!r}"
        )
    fraction = magnitude / (num_magnitude_bins - 1)  # torch.linspace(lo, hi, bins)[magnitude]
    return {
        "Identity": (0.0, False),
        "ShearX": (0.3 * fraction, True),
        "ShearY": (0.3 * fraction, True),
        "TranslateX": (150.0 / 331.0 * width * fraction, True),
        "TranslateY": (150.0 / 331.0 * height * fraction, True),
        "Rotate": (30.0 * fraction, True),
        "Brightness": (0.9 * fraction, True),
        "Color": (0.9 * fraction, True),
        "Contrast": (0.9 * fraction, True),
        "Sharpness": (0.9 * fraction, True),
        # torchvision: 8 - round(arange(bins) / ((bins - 1) / 4)), round half to even.
        "Posterize": (float(8 - round(magnitude / ((num_magnitude_bins - 1) / 4))), False),
        "Solarize": (255.0 * (1.0 - fraction), False),
        "AutoContrast": (0.0, False),
        "Equalize": (0.0, False),
    }


def _apply_rand_augment_op(image, op_index, value, interpolation):
    """Apply RAND_AUGMENT_OPS[op_index] with strength `value` to a float32 [0, 255] image."""
    shape = tf.shape(image)
    one, zero = tf.constant(1.0), tf.constant(0.0)

    def warp(matrix):
        return lambda: projective_transform(image, matrix, interpolation, 0.0)

    branches = {
        "Identity": lambda: image,
        # torchvision shears about the top-left corner (center=[0, 0]).
        "ShearX": warp(_affine(one, value, zero, zero, one, zero)),
        "ShearY": warp(_affine(one, zero, zero, value, one, zero)),
        "TranslateX": warp(_affine(one, zero, -value, zero, one, zero)),
        "TranslateY": warp(_affine(one, zero, zero, zero, one, -value)),
        "Rotate": warp(_rotation_matrix(shape[0], shape[1], value)),
        "Brightness": lambda: adjust_brightness(image, 1.0 + value),
        "Color": lambda: adjust_saturation(image, 1.0 + value),
        "Contrast": lambda: adjust_contrast(image, 1.0 + value),
        "Sharpness": lambda: adjust_sharpness(image, 1.0 + value),
        "Posterize": lambda: tf.cast(posterize(_to_uint8(image), tf.cast(value, tf.int32)), tf.float32),
        "Solarize": lambda: solarize(image, value),
        "AutoContrast": lambda: autocontrast(image),
        "Equalize": lambda: equalize(image),
    }
    return tf.switch_case(op_index, [branches[name] for name in RAND_AUGMENT_OPS])


def rand_augment(image, seed, num_ops=2, magnitude=9, num_magnitude_bins=31, interpolation="BILINEAR"):
    """torchvision's RandAugment on one (H, W, 3) uint8 image -> uint8.

    `num_ops` ops drawn uniformly (with replacement) from RAND_AUGMENT_OPS, each at the strength
    of bin `magnitude` with a random sign where the op is signed. Geometric ops fill with 0.
    ml-cvnets uses num_ops=2, magnitude=9, 31 bins, bilinear.
    """
    if image.dtype != tf.uint8:
        raise ValueError(f"rand_augment expects a uint8 image, received dtype {image.dtype.name}")
    static_hw = image.shape[:2]
    if static_hw[0] is None or static_hw[1] is None:
        raise ValueError(f"rand_augment needs a static image size (translate strengths), received shape {image.shape}")
    strengths = rand_augment_magnitudes(magnitude, num_magnitude_bins, static_hw[0], static_hw[1])
    values = tf.constant([strengths[name][0] for name in RAND_AUGMENT_OPS], tf.float32)
    signed = tf.constant([strengths[name][1] for name in RAND_AUGMENT_OPS])
    def apply_one(i, x):
        s_op, s_sign = split_seed(tf.random.experimental.stateless_fold_in(seed, i), 2)
        op_index = _randint(s_op, 0, len(RAND_AUGMENT_OPS))
        value = values[op_index]
        value = tf.where(signed[op_index] & (_uniform(s_sign) < 0.5), -value, value)
        # Each op ends on uint8 values, as torchvision's ops on uint8 images do.
        return i + 1, tf.cast(_to_uint8(_apply_rand_augment_op(x, op_index, value, interpolation)), tf.float32)

    # A while loop traces the 14 ops once, however many are applied.
    _, x = tf.while_loop(lambda i, x: i < num_ops, apply_one, (tf.constant(0), tf.cast(image, tf.float32)))
    return tf.ensure_shape(_to_uint8(x), image.shape)


def random_erasing(image, seed, probability=0.25, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0.0, attempts=10):
    """torchvision's RandomErasing on a normalized (H, W, C) float image.

    With `probability`, up to `attempts` draws of a rectangle (area fraction in `scale`,
    log-uniform aspect ratio in `ratio`) that must fit strictly inside the image; the first that
    fits is set to `value` (0: black, as ml-cvnets). If none fits the image is unchanged.
    """
    shape = tf.shape(image)
    h = tf.cast(shape[0], tf.float32)
    w = tf.cast(shape[1], tf.float32)
    s_apply, s_area, s_ratio, s_top, s_left = split_seed(seed, 5)
    erase_area = h * w * _uniform(s_area, scale[0], scale[1], [attempts])
    aspect = tf.exp(_uniform(s_ratio, math.log(ratio[0]), math.log(ratio[1]), [attempts]))
    eh = tf.round(tf.sqrt(erase_area * aspect))
    ew = tf.round(tf.sqrt(erase_area / aspect))
    fits = (eh < h) & (ew < w)
    tops = tf.floor(_uniform(s_top, shape=[attempts]) * (h - eh + 1.0))
    lefts = tf.floor(_uniform(s_left, shape=[attempts]) * (w - ew + 1.0))
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    apply = (_uniform(s_apply) < probability) & tf.reduce_any(fits)
    rows = tf.range(h)
    cols = tf.range(w)
    in_rows = (rows >= tops[first]) & (rows < tops[first] + eh[first])
    in_cols = (cols >= lefts[first]) & (cols < lefts[first] + ew[first])
    region = (in_rows[:, None] & in_cols[None, :])[..., None] & apply
    return tf.where(region, tf.cast(value, image.dtype), image)


def smooth_labels(labels, num_classes, smoothing):
    """int labels (B,) or () -> one-hot float32 with `smoothing` spread evenly over all classes.

    y = onehot * (1 - smoothing) + smoothing / num_classes, as Keras' and torch's cross-entropy
    label smoothing; each row sums to 1.
    """
    one_hot = tf.one_hot(labels, num_classes, dtype=tf.float32)
    return one_hot * (1.0 - smoothing) + smoothing / num_classes


def mix_batch(images, labels, seed, mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=0.5):
    """MixUp or CutMix on a batch, as ml-cvnets (torchvision's RandomMixup / RandomCutmix).

    images (B, H, W, C) float, labels (B, K) float (one-hot or smoothed). Each image is mixed with
    its neighbour (the batch rolled by one) with lam ~ Beta(alpha, alpha); CutMix pastes a box of
    area ~(1 - lam) and recomputes lam from the clipped box. With both enabled, CutMix is used
    with probability `switch_prob`, else MixUp (0.5 in ml-cvnets and timm). An alpha of 0
    disables that method. Labels stay distributions: lam * y + (1 - lam) * y_rolled.
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, labels
    s_switch, s_lam, s_x, s_y = split_seed(seed, 4)
    rolled_images = tf.roll(images, 1, axis=0)
    rolled_labels = tf.roll(labels, 1, axis=0)

    def mixup():
        lam = sample_beta(s_lam, mixup_alpha)
        return lam * images + (1.0 - lam) * rolled_images, lam

    def cutmix():
        lam = sample_beta(s_lam, cutmix_alpha)
        shape = tf.shape(images)
        height, width = shape[1], shape[2]
        center_x = _randint(s_x, 0, width)
        center_y = _randint(s_y, 0, height)
        r = 0.5 * tf.sqrt(1.0 - lam)
        half_w = tf.cast(r * tf.cast(width, tf.float32), tf.int32)
        half_h = tf.cast(r * tf.cast(height, tf.float32), tf.int32)
        x1, x2 = tf.maximum(center_x - half_w, 0), tf.minimum(center_x + half_w, width)
        y1, y2 = tf.maximum(center_y - half_h, 0), tf.minimum(center_y + half_h, height)
        rows = tf.range(height)
        cols = tf.range(width)
        box = ((rows >= y1) & (rows < y2))[:, None] & ((cols >= x1) & (cols < x2))[None, :]
        mixed = tf.where(box[None, :, :, None], rolled_images, images)
        area = tf.cast((x2 - x1) * (y2 - y1), tf.float32)
        return mixed, 1.0 - area / tf.cast(width * height, tf.float32)

    if mixup_alpha <= 0:
        mixed, lam = cutmix()
    elif cutmix_alpha <= 0:
        mixed, lam = mixup()
    else:
        mixed, lam = tf.cond(_uniform(s_switch) < switch_prob, cutmix, mixup)
    return mixed, lam * labels + (1.0 - lam) * rolled_labels


# -------------------------------------------------------------------------------- segmentation
def resize_image_and_mask(image, mask, size, method="bicubic"):
    """Resize (H, W, 3) float [0, 255] with `method` (antialiased, like PIL) and the (H, W) mask
    with nearest neighbour, to `size` = (height, width)."""
    image = tf.image.resize(image, size, method=method, antialias=method != "nearest")
    image = tf.clip_by_value(image, 0.0, 255.0)
    mask = tf.image.resize(mask[..., None], size, method="nearest")[..., 0]
    return image, mask


def random_short_side_resize(image, mask, seed, short_side_range=(256, 768), max_image_dim=1024, method="bicubic"):
    """ml-cvnets' RandomShortSizeResize: the short side becomes a uniform integer in
    `short_side_range` (inclusive), unless that makes the long side exceed `max_image_dim`."""
    shape = tf.shape(image)
    h = tf.cast(shape[0], tf.float32)
    w = tf.cast(shape[1], tf.float32)
    short_side = tf.cast(_randint(seed, short_side_range[0], short_side_range[1] + 1), tf.float32)
    scale = tf.minimum(short_side / tf.minimum(h, w), max_image_dim / tf.maximum(h, w))
    size = tf.cast(tf.stack([h * scale, w * scale]), tf.int32)  # int() truncation, as ml-cvnets
    return resize_image_and_mask(image, mask, tf.maximum(size, 1), method)


def pad_to_at_least(image, mask, size, ignore_index=255):
    """Pad bottom/right to at least `size` x `size`: the image with 0, the mask with `ignore_index`."""
    shape = tf.shape(image)
    pad_h = tf.maximum(size - shape[0], 0)
    pad_w = tf.maximum(size - shape[1], 0)
    image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]], constant_values=0.0)
    mask = tf.pad(mask, [[0, pad_h], [0, pad_w]], constant_values=tf.cast(ignore_index, mask.dtype))
    return image, mask


def _class_max_ratio(mask_crop, ignore_index):
    """(largest class's pixels / labelled pixels, number of labelled classes) of a mask crop."""
    counts = tf.math.bincount(tf.cast(tf.reshape(mask_crop, [-1]), tf.int32), minlength=256, maxlength=256)
    counts = tf.tensor_scatter_nd_update(counts, [[ignore_index]], [0])
    total = tf.reduce_sum(counts)
    ratio = tf.cast(tf.reduce_max(counts), tf.float32) / tf.cast(tf.maximum(total, 1), tf.float32)
    return ratio, tf.reduce_sum(tf.cast(counts > 0, tf.int32))


def random_crop_with_mask(image, mask, seed, size, ignore_index=255, seg_class_max_ratio=None, attempts=10):
    """ml-cvnets' RandomCrop(pad_if_needed): pad to `size`, then a random `size` x `size` crop.

    With `seg_class_max_ratio` (0.75 in ml-cvnets' VOC recipe), up to `attempts` crops are drawn
    until one has at least two labelled classes and no class above that share of the labelled
    pixels; if none qualifies, one more crop is drawn and taken. (ml-cvnets retries an all-ignore
    crop without drawing a new one; here it counts as a failed attempt.)
    """
    image, mask = pad_to_at_least(image, mask, size, ignore_index)
    shape = tf.shape(image)
    candidates = attempts + 1 if seg_class_max_ratio is not None and seg_class_max_ratio < 1.0 else 1
    s_top, s_left = split_seed(seed, 2)
    tops = tf.random.stateless_uniform([candidates], s_top, 0, shape[0] - size + 1, dtype=tf.int32)
    lefts = tf.random.stateless_uniform([candidates], s_left, 0, shape[1] - size + 1, dtype=tf.int32)
    if candidates == 1:
        chosen = tf.constant(0)
    else:
        def acceptable(i):
            crop = mask[tops[i] : tops[i] + size, lefts[i] : lefts[i] + size]
            ratio, num_classes = _class_max_ratio(crop, ignore_index)
            return (num_classes > 1) & (ratio < seg_class_max_ratio)

        ok = tf.map_fn(acceptable, tf.range(attempts), fn_output_signature=tf.bool)
        chosen = tf.where(tf.reduce_any(ok), tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32), attempts)
    top, left = tops[chosen], lefts[chosen]
    image = image[top : top + size, left : left + size]
    mask = mask[top : top + size, left : left + size]
    return tf.ensure_shape(image, [size, size, 3]), tf.ensure_shape(mask, [size, size])


def random_gaussian_blur(image, seed, probability=0.5, kernel_size=7):
    """ml-cvnets' RandomGaussianBlur: with `probability`, blur with sigma ~ U(0, 1) px (PIL's
    GaussianBlur radius), edges replicated."""
    s_apply, s_sigma = split_seed(seed, 2)
    sigma = tf.maximum(_uniform(s_sigma), 1e-3)
    half = kernel_size // 2
    taps = tf.range(-half, half + 1, dtype=tf.float32)
    weights = tf.exp(-0.5 * tf.square(taps / sigma))
    weights = weights / tf.reduce_sum(weights)

    def blur():
        x = tf.pad(image[None], [[0, 0], [half, half], [half, half], [0, 0]], mode="SYMMETRIC")
        kx = tf.tile(tf.reshape(weights, [1, kernel_size, 1, 1]), [1, 1, 3, 1])
        ky = tf.tile(tf.reshape(weights, [kernel_size, 1, 1, 1]), [1, 1, 3, 1])
        x = tf.nn.depthwise_conv2d(x, kx, [1, 1, 1, 1], "VALID")
        x = tf.nn.depthwise_conv2d(x, ky, [1, 1, 1, 1], "VALID")
        return x[0]

    return tf.cond(_uniform(s_apply) < probability, blur, lambda: image)


def photometric_distort(
    image,
    seed,
    probability=0.5,
    brightness=(0.875, 1.125),
    contrast=(0.5, 1.5),
    saturation=(0.5, 1.5),
    hue=(-0.05, 0.05),
):
    """ml-cvnets' PhotometricDistort on a float32 [0, 255] image.

    Each step runs with `probability`: brightness, contrast (before or after the colour steps,
    a coin flip), saturation, hue, and a random permutation of the channels.
    """
    seeds = split_seed(seed, 12)
    coins = _uniform(seeds[0], shape=[7]) < probability

    def maybe(flag, fn, x):
        return tf.cond(flag, lambda: fn(x), lambda: x)

    def factor(s, bounds):
        return _uniform(s, bounds[0], bounds[1])

    contrast_first = coins[1]
    x = maybe(coins[0], lambda t: adjust_brightness(t, factor(seeds[1], brightness)), image)
    x = maybe(contrast_first & coins[2], lambda t: adjust_contrast(t, factor(seeds[2], contrast)), x)
    x = maybe(coins[3], lambda t: adjust_saturation(t, factor(seeds[3], saturation)), x)
    x = maybe(coins[4], lambda t: adjust_hue(t, factor(seeds[4], hue)), x)
    x = maybe(~contrast_first & coins[5], lambda t: adjust_contrast(t, factor(seeds[5], contrast)), x)
    permutation = tf.argsort(_uniform(seeds[6], shape=[3]))
    x = maybe(coins[6], lambda t: tf.gather(t, permutation, axis=-1), x)
    return tf.clip_by_value(x, 0.0, 255.0)


def random_rotate(image, mask, seed, degrees=10.0, ignore_index=255):
    """ml-cvnets' RandomRotate: angle ~ U(-degrees, degrees) about the centre; the image bilinear
    filled with 0, the mask nearest filled with `ignore_index`."""
    angle = _uniform(seed, -degrees, degrees)
    shape = tf.shape(image)
    matrix = _rotation_matrix(shape[0], shape[1], angle)
    image = projective_transform(image, matrix, "BILINEAR", 0.0)
    mask = projective_transform(tf.cast(mask[..., None], tf.float32), matrix, "NEAREST", float(ignore_index))
    return image, tf.cast(mask[..., 0], tf.uint8)
