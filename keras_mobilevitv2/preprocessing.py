"""The MobileViTV2 image processor, defined once for Python and for TF graphs.

Reference: transformers' `MobileViTImageProcessor` (`MobileViTImageProcessorPil` without
torchvision): resize so the shortest edge is `shortest_edge`, centre crop to
`crop_height` x `crop_width`, rescale by 1/255, flip RGB -> BGR (Apple's checkpoints were trained
on BGR). No mean/std normalisation.

`normalize_pixels` is the one definition of scaling and channel order; `tf_preprocess` (in-graph,
one image) and `preprocess_image` (Python: eager `tf_preprocess`, so bit-identical to the graph)
are built on it. `decode_image` decodes in-graph.

Distance to transformers (PIL backend), |ours - theirs| in [0, 1] units, bilinear, mean / max:

    chelsea.png (451 x 300)        288 -> 256: 0.00076 / 0.0039    VOC 512: 0.00065 / 0.0039
    grace_hopper.jpg (512 x 600)   288 -> 256: 0.00057 / 0.0039    VOC 512: 0 / 0 (identity resize)
    hubble_deep_field.jpg (1000 x 872) 288 -> 256: 0.00044 / 0.0039  VOC 512: 0.00058 / 0.0039

0.0039 is one grey level; 80-100% of values are identical. This needs `antialias=True` (PIL widens
its kernel when downscaling; without it grace_hopper 512 -> 288 is 0.0091 / 0.34 off) and
rounding the resized uint8 image to integers as PIL does (otherwise ~0% are identical). Bicubic
differs by up to 5 grey levels (PIL's fixed-point cubic). Decoding matches PIL bit for bit.
"""

import dataclasses
import math
import os
import sys

import numpy as np
import tensorflow as tf

# Resampling methods we support, with their PIL codes (transformers' `resample` field).
RESAMPLE_PIL_CODES = {"nearest": 0, "bilinear": 2, "bicubic": 3}
_PIL_CODE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}

DEFAULT_PRESET = "mobilevitv2-1.0-imagenet1k-256"

# transformers 5's `MobileViTImageProcessor` class defaults: what a `preprocessor_config.json`
# gets for a field it omits (or sets to null). Not our defaults, which are the ImageNet preset.
HF_DEFAULTS = {
    "do_resize": True,
    "size": {"shortest_edge": 224},
    "resample": 3,  # bicubic
    "do_center_crop": True,
    "crop_size": {"height": 256, "width": 256},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_flip_channel_order": True,
}


# Decoded-size limit of every image entry point (serving signatures, `preprocess_image`, predict,
# the tf.data pipelines): height * width read from the image header before any pixel is decoded.
# 50 megapixels decode to 150 MB of RGB; a 12 KB PNG can claim 10000 x 10000.
MAX_IMAGE_PIXELS = 50_000_000
# Bounds of the preprocessing sizes (a shortest edge of 1e6 would resize to terabytes).
MAX_IMAGE_SIDE = 8192


class ImageTooLargeError(ValueError):
    """An image whose header claims more than the allowed number of pixels."""


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class PreprocessingConfig:
    """Settings of the image processor; the defaults are Apple's 256 ImageNet checkpoints.

    Args:
        shortest_edge: the shorter image side after resizing; the longer side keeps the aspect
            ratio, `int(shortest_edge * long / short)` as in transformers.
        crop_height, crop_width: size of the centre crop (zero-padded if the image is smaller).
        do_resize, do_center_crop, do_rescale, do_flip_channel_order: which steps run.
        rescale_factor: pixels are multiplied by it (1/255 maps [0, 255] to [0, 1]).
        resample: "bilinear", "bicubic" or "nearest".
    """

    shortest_edge: int = 288
    crop_height: int = 256
    crop_width: int = 256
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_flip_channel_order: bool = True
    resample: str = "bilinear"

    def __post_init__(self):
        for name in ("shortest_edge", "crop_height", "crop_width"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ValueError(f"{name} must be a positive int, received {name}={value!r}")
            if value > MAX_IMAGE_SIDE:
                raise ValueError(f"{name} must be at most {MAX_IMAGE_SIDE} (MAX_IMAGE_SIDE), received {name}={value!r}")
        for name in ("do_resize", "do_center_crop", "do_rescale", "do_flip_channel_order"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be a bool, received {name}={value!r}")
        factor = self.rescale_factor
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not (
            math.isfinite(factor) and factor > 0
        ):
            raise ValueError(f"rescale_factor must be a positive finite number, received rescale_factor={factor!r}")
        if self.resample not in RESAMPLE_PIL_CODES:
            raise ValueError(
                f"resample must be one of {sorted(RESAMPLE_PIL_CODES)}, received resample={self.resample!r}"
            )

    # -- serialisation -------------------------------------------------------------------------

    def to_dict(self):
        """The constructor's arguments, JSON-serialisable (for saving with a Keras model)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict):
            raise ValueError(f"preprocessing must be a dict of PreprocessingConfig fields, received {d!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in d if k not in fields)
        if unknown:
            raise ValueError(f"unknown preprocessing field(s) {unknown}; expected some of {sorted(fields)}")
        return cls(**d)

    @classmethod
    def from_hf_dict(cls, d):
        """Read a transformers `preprocessor_config.json` dict (or a preset's `preprocessing`).

        `size` may be `{"shortest_edge": n}` or an int (old feature extractors), `crop_size`
        `{"height": h, "width": w}` or an int, `resample` a PIL code or a method name. Missing or
        null fields take transformers' defaults (`HF_DEFAULTS`). Fields the MobileViT processor does
        not use for images (`image_mean`, `do_reduce_labels`, ...) are ignored.
        """
        if not isinstance(d, dict):
            raise ValueError(f"a preprocessor config must be a JSON object, received {d!r}")
        d = {**HF_DEFAULTS, **{key: value for key, value in d.items() if value is not None}}
        kwargs = {}
        size = d["size"]
        if _is_int(size):
            kwargs["shortest_edge"] = size
        elif isinstance(size, dict) and set(size) == {"shortest_edge"} and _is_int(size["shortest_edge"]):
            kwargs["shortest_edge"] = size["shortest_edge"]
        else:
            raise ValueError(f'size must be {{"shortest_edge": int}} or an int, received size={size!r}')
        crop = d["crop_size"]
        if _is_int(crop):
            kwargs["crop_height"] = kwargs["crop_width"] = crop
        elif isinstance(crop, dict) and set(crop) == {"height", "width"} and all(_is_int(v) for v in crop.values()):
            kwargs["crop_height"], kwargs["crop_width"] = crop["height"], crop["width"]
        else:
            raise ValueError(
                f'crop_size must be {{"height": int, "width": int}} or an int, received crop_size={crop!r}'
            )
        kwargs["resample"] = _resample_name(d["resample"])
        for name in ("do_resize", "do_center_crop", "do_rescale", "rescale_factor", "do_flip_channel_order"):
            kwargs[name] = d[name]
        return cls(**kwargs)

    def to_hf_dict(self):
        """A `preprocessor_config.json` dict: `MobileViTImageProcessor(**d)` rebuilds this processor."""
        return {
            "image_processor_type": "MobileViTImageProcessor",
            "do_resize": self.do_resize,
            "size": {"shortest_edge": self.shortest_edge},
            "resample": RESAMPLE_PIL_CODES[self.resample],
            "do_center_crop": self.do_center_crop,
            "crop_size": {"height": self.crop_height, "width": self.crop_width},
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_flip_channel_order": self.do_flip_channel_order,
        }

    @classmethod
    def from_preset(cls, name):
        from keras_mobilevitv2.presets import get_preset

        return cls.from_hf_dict(get_preset(name)["preprocessing"])


def _resample_name(value):
    """A method name from a PIL code (int or `PILImageResampling`) or a name."""
    if isinstance(value, str):
        name = value.lower()
    elif _is_int(value):
        name = _PIL_CODE_NAMES.get(int(value), value)
    else:
        name = None
    if name not in RESAMPLE_PIL_CODES:
        raise ValueError(
            f"resample must be one of {sorted(RESAMPLE_PIL_CODES)} or their PIL codes "
            f"{sorted(RESAMPLE_PIL_CODES.values())}, received resample={value!r}"
        )
    return name


def normalize_pixels(image, config=None):
    """(..., H, W, 3) RGB pixels in [0, 255] (uint8 or float) -> float32, rescaled and channel-flipped.

    A TF op (works in `tf.function`, `tf.data`, SavedModel signatures). The one definition of pixel
    scaling and channel order: with the default config the output is BGR in [0, 1].
    """
    config = config or PreprocessingConfig()
    image = tf.convert_to_tensor(image)
    if image.shape.rank is not None and image.shape[-1] is not None and image.shape[-1] != 3:
        raise ValueError(f"normalize_pixels expects (..., H, W, 3) RGB images, received shape {image.shape}")
    x = tf.cast(image, tf.float32)
    if config.do_rescale:
        # float32 multiply: the same bits eagerly, in graphs and under XLA (grappler rewrites
        # x / 255 as x * (1 / 255) in graphs anyway). transformers multiplies in float64 and casts,
        # which differs by one float32 ulp (~3e-8) for 126 of the 256 uint8 values.
        x = x * tf.constant(config.rescale_factor, tf.float32)
    if config.do_flip_channel_order:
        x = tf.reverse(x, axis=[-1])  # RGB -> BGR
    return x


def resized_size(height, width, shortest_edge):
    """(new_height, new_width) with the shorter side `shortest_edge`, as int64 tensors.

    transformers' `get_resize_output_image_size(default_to_square=False)`: the longer side is
    `int(shortest_edge * long / short)`, truncated (451 x 300 at 288 gives 432, not 433). Integer
    floor division gives the same value: the float quotient cannot round up to the next integer
    while `shortest_edge * long < 2**53`.
    """
    height = tf.cast(height, tf.int64)
    width = tf.cast(width, tf.int64)
    edge = tf.constant(shortest_edge, tf.int64)
    short, long = tf.minimum(height, width), tf.maximum(height, width)
    new_long = edge * long // short
    portrait = width <= height
    return tf.where(portrait, new_long, edge), tf.where(portrait, edge, new_long)


def _resize_shortest_edge(image, config):
    """(H, W, 3) -> (H', W', 3) with min(H', W') = config.shortest_edge.

    `antialias=True` widens the kernel by the downscaling factor like PIL does; without it,
    downscaling grace_hopper.jpg 512 -> 288 is off by up to 0.34 (in [0, 1] units) from PIL.
    """
    shape = tf.shape(image)
    new_height, new_width = resized_size(shape[0], shape[1], config.shortest_edge)
    size = tf.cast(tf.stack([new_height, new_width]), tf.int32)
    resized = tf.image.resize(image, size, method=config.resample, antialias=config.resample != "nearest")
    if image.dtype == tf.uint8 and resized.dtype != tf.uint8:
        # PIL resizes uint8 to uint8, rounding half up and saturating (bicubic overshoots).
        resized = tf.clip_by_value(tf.floor(resized + 0.5), 0.0, 255.0)
    return resized


def _crop_or_pad_offsets(size, target):
    """Per axis, as transformers' `center_crop`: crop at (size - target) // 2 or zero-pad
    ceil((target - size) / 2) before and the rest after."""
    pad = tf.maximum(target - size, 0)
    pad_before = (pad + 1) // 2
    return pad_before, pad - pad_before, tf.maximum(size - target, 0) // 2


def _center_crop(image, crop_height, crop_width):
    """(H, W, C) -> (crop_height, crop_width, C)."""
    shape = tf.shape(image)
    top_pad, bottom_pad, top = _crop_or_pad_offsets(shape[0], crop_height)
    left_pad, right_pad, left = _crop_or_pad_offsets(shape[1], crop_width)
    image = tf.pad(image, [[top_pad, bottom_pad], [left_pad, right_pad], [0, 0]])
    image = image[top : top + crop_height, left : left + crop_width]
    return tf.ensure_shape(image, [crop_height, crop_width, image.shape[-1]])


def tf_preprocess(image, config=None):
    """In-graph preprocessing of one image: (H, W, 3) RGB -> (crop_height, crop_width, 3) float32.

    `image` is uint8 (or float in [0, 255]); H and W may be unknown. Resizes the shortest edge
    (`tf.image.resize`, antialiased, rounded to integers for uint8 input as PIL does), centre crops
    and applies `normalize_pixels`. Without centre crop the output is (H', W', 3). A `tf.RaggedTensor`
    image (an element of `tf.map_fn` over a ragged batch) is made dense first.

    Uses `tf.image.resize`, not `keras.ops.image.resize`: Keras 3.15.1 cannot export the latter
    with dynamic H and W. Antialiased resizing is the `ScaleAndTranslate` op, which SavedModels
    and TF Serving run but TFLite builtins do not.
    """
    config = config or PreprocessingConfig()
    if isinstance(image, tf.RaggedTensor):
        image = image.to_tensor()
    image = tf.convert_to_tensor(image)
    if image.shape.rank != 3 or image.shape[-1] not in (None, 3):
        raise ValueError(f"tf_preprocess expects one (H, W, 3) RGB image, received shape {image.shape}")
    if config.do_resize:
        image = _resize_shortest_edge(image, config)
    if config.do_center_crop:
        image = _center_crop(image, config.crop_height, config.crop_width)
    return normalize_pixels(image, config)


# ---------------------------------------------------------------------------- image headers
# The formats `decode_image` accepts, told apart by the same leading bytes TensorFlow's decoder uses.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WebP")
_JPEG_SOF_MARKERS = [m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC)]  # not DHT, JPG, DAC


def _substr(data, pos, n):
    """`data[pos:pos + n]` of a scalar string, empty beyond its end (tf.strings.substr raises there)."""
    return tf.strings.substr(data, tf.minimum(pos, tf.strings.length(data)), n)


def _bytes_at(data, pos, n):
    """n bytes of the scalar string `data` from `pos` as int64 (zero beyond its end)."""
    size = tf.strings.length(data)
    pos = tf.minimum(tf.cast(pos, tf.int32), size)
    raw = tf.io.decode_raw(tf.strings.substr(data, pos, n), tf.uint8)
    return tf.cast(tf.pad(raw, [[0, n - tf.shape(raw)[0]]]), tf.int64)


def _big_endian(b):
    return tf.reduce_sum(b * tf.bitwise.left_shift(tf.constant(1, tf.int64), 8 * tf.range(tf.size(b) - 1, -1, -1, tf.int64)))


def _little_endian(b):
    return tf.reduce_sum(b * tf.bitwise.left_shift(tf.constant(1, tf.int64), 8 * tf.range(tf.size(b), dtype=tf.int64)))


def _jpeg_size(data):
    """(height, width) of a JPEG from its first SOF0..SOF15 segment, walking the marker segments
    by their lengths; (-1, -1) if the markers end (or break) before one."""
    size = tf.cast(tf.strings.length(data), tf.int64)
    sof = tf.constant(_JPEG_SOF_MARKERS, tf.int64)

    def cond(pos, height, width, done):
        return tf.logical_and(tf.logical_not(done), pos + 9 <= size)

    def body(pos, height, width, done):
        b = _bytes_at(data, pos, 9)
        marker = b[1]
        is_sof = tf.logical_and(tf.equal(b[0], 0xFF), tf.reduce_any(tf.equal(marker, sof)))
        broken = tf.logical_or(tf.not_equal(b[0], 0xFF), tf.equal(marker, 0xDA))  # no SOF before SOS
        standalone = tf.logical_or(
            tf.logical_and(marker >= 0xD0, marker <= 0xD8), tf.logical_or(tf.equal(marker, 0x01), tf.equal(marker, 0xFF))
        )
        step = tf.where(tf.equal(marker, 0xFF), tf.constant(1, tf.int64), tf.where(standalone, tf.constant(2, tf.int64), 2 + _big_endian(b[2:4])))
        height = tf.where(is_sof, _big_endian(b[5:7]), height)
        width = tf.where(is_sof, _big_endian(b[7:9]), width)
        return pos + step, height, width, tf.logical_or(is_sof, broken)

    minus_one = tf.constant(-1, tf.int64)
    _, height, width, _ = tf.while_loop(cond, body, (tf.constant(2, tf.int64), minus_one, minus_one, tf.constant(False)))
    return height, width


def _webp_size(data, head):
    """(height, width) of a WebP from its first chunk (VP8, VP8L or VP8X); (-1, -1) otherwise."""
    chunk = _substr(data, 12, 4)
    vp8 = tf.stack([_little_endian(head[28:30]) % 16384, _little_endian(head[26:28]) % 16384])
    bits = _little_endian(head[21:25])
    vp8l = tf.stack([tf.bitwise.right_shift(bits, 14) % 16384 + 1, bits % 16384 + 1])
    vp8x = tf.stack([_little_endian(head[27:30]) + 1, _little_endian(head[24:27]) + 1])
    hw = tf.where(
        tf.equal(chunk, "VP8 "), vp8, tf.where(tf.equal(chunk, "VP8L"), vp8l, tf.where(tf.equal(chunk, "VP8X"), vp8x, -1))
    )
    return hw[0], hw[1]


def image_header_size(data):
    """(format index, height, width) of encoded image bytes, read from the header, no pixel decoded.

    A TF op on a scalar string (in graphs, `tf.data` and eagerly on Python bytes: the one parser).
    The format index is into `IMAGE_FORMATS`, or -1 when the bytes are none of them; height and
    width are int64, -1 when the header of a known format cannot be read (truncated, or a JPEG
    whose markers break before its frame header). PNG: IHDR (big-endian, bytes 16-24); GIF:
    logical screen (little-endian, bytes 6-10); BMP: bytes 18-26 (little-endian, a negative
    height is a top-down bitmap); JPEG: the first SOF0..SOF15 marker; WebP: the VP8 / VP8L / VP8X chunk.
    """
    data = tf.convert_to_tensor(data, tf.string)
    head = _bytes_at(data, 0, 30)
    header_read = tf.cast(tf.strings.length(data), tf.int64) >= 30
    head_str = _substr(data, 0, 16)
    is_jpeg = tf.equal(_substr(head_str, 0, 3), b"\xff\xd8\xff")
    is_png = tf.equal(_substr(head_str, 0, 4), b"\x89PNG")
    is_gif = tf.equal(_substr(head_str, 0, 4), b"GIF8")
    is_bmp = tf.equal(_substr(head_str, 0, 2), b"BM")
    is_webp = tf.logical_and(
        tf.equal(_substr(head_str, 0, 4), b"RIFF"), tf.equal(_substr(head_str, 8, 4), b"WEBP")
    )
    fmt = tf.where(is_jpeg, 0, tf.where(is_png, 1, tf.where(is_gif, 2, tf.where(is_bmp, 3, tf.where(is_webp, 4, -1)))))

    def signed32(b):
        value = _little_endian(b)
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    ihdr = tf.equal(_substr(data, 12, 4), b"IHDR")
    png = tf.where(tf.logical_and(ihdr, header_read), tf.stack([_big_endian(head[20:24]), _big_endian(head[16:20])]), -1)
    gif = tf.where(tf.strings.length(data) >= 10, tf.stack([_little_endian(head[8:10]), _little_endian(head[6:8])]), -1)
    bmp = tf.where(header_read, tf.stack([signed32(head[22:26]), signed32(head[18:22])]), -1)
    webp = tf.where(header_read, tf.stack(_webp_size(data, head)), -1)
    other = tf.where(is_png, png, tf.where(is_gif, gif, tf.where(is_bmp, bmp, webp)))
    hw = tf.cond(is_jpeg, lambda: tf.stack(_jpeg_size(data)), lambda: other)
    hw = tf.where(tf.equal(fmt, -1), tf.constant([-1, -1], tf.int64), hw)
    return fmt, hw[0], hw[1]


def check_image_size(data, max_pixels=MAX_IMAGE_PIXELS, index=None):
    """In-graph: an op asserting that `data`'s header names a known format and at most `max_pixels`
    pixels (`InvalidArgumentError` naming `index`, the image's place in a batch, when given).
    Eagerly it checks at once: raises, or returns None."""
    _, height, width = image_header_size(data)
    unreadable = "Unknown image file format, or its header holds no image size (JPEG, PNG, GIF, BMP or WebP expected)"
    if tf.executing_eagerly():  # the message alone, not "Expected 'tf.Tensor(False...)' to be true"
        where = "the image" if index is None else f"image {int(index)} of the batch"
        height, width = int(height), int(width)
        if height < 0 or width < 0:
            message = unreadable if index is None else f"{where}: {unreadable}"
        elif max_pixels is not None and height * width > max_pixels:
            message = (
                f"{where} is {height} x {width} = {height * width} pixels, over the limit of {max_pixels} pixels "
                "(max_image_pixels)"
            )
        else:
            return None
        raise tf.errors.InvalidArgumentError(None, None, message)
    where = tf.constant("the image") if index is None else tf.strings.format("image {} of the batch", [index])
    readable = tf.debugging.Assert(
        tf.logical_and(height >= 0, width >= 0),
        [unreadable if index is None else tf.strings.join([where, ": ", unreadable])],
    )
    if max_pixels is None:
        return readable
    with tf.control_dependencies([readable]):
        return tf.debugging.Assert(
            height * width <= max_pixels,
            [tf.strings.join([where, tf.strings.format(
                " is {} x {} = {} pixels, over the limit of {} pixels (max_image_pixels)",
                (height, width, height * width, tf.constant(max_pixels, tf.int64)),
            )])],
        )


def decode_image(data, max_pixels=MAX_IMAGE_PIXELS, index=None):
    """In-graph decoding of JPEG / PNG / BMP / GIF / WebP bytes (a scalar string) -> (H, W, 3) uint8 RGB.

    First the header is read (`image_header_size`): bytes of no known format, a header without a
    size, or more than `max_pixels` pixels (default `MAX_IMAGE_PIXELS`; None: no limit) are an
    `InvalidArgumentError` before any pixel is decoded, naming `index` (its place in a batch)
    when given. Grayscale is repeated to 3 channels, alpha dropped, a GIF gives its first frame.
    JPEG uses `dct_method="INTEGER_ACCURATE"`: it is bit-identical to PIL, while TF's default
    (fast) IDCT differs from it by up to 6 grey levels (grace_hopper.jpg).
    """
    data = tf.convert_to_tensor(data, tf.string)
    check = check_image_size(data, max_pixels, index)  # raises at once when eager
    if check is not None:
        with tf.control_dependencies([check]):
            data = tf.identity(data)
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: _to_rgb(tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False)),
    )
    return tf.ensure_shape(image, [None, None, 3])


def _to_rgb(image):
    """(H, W, C) uint8 of 1-4 channels -> (H, W, 3): grey (with or without alpha) repeated, alpha dropped.
    (Decoding with `channels=3` would do this for PNG and BMP, but fails on a WebP with alpha.)"""
    return tf.cond(
        tf.shape(image)[-1] < 3,
        lambda: tf.repeat(image[..., :1], 3, axis=-1),
        lambda: image[..., :3],
    )


def image_size_or_none(data):
    """Python: (height, width) from the header of encoded image bytes, or None if none is readable."""
    fmt, height, width = (int(v) for v in image_header_size(tf.constant(bytes(data))))
    return None if fmt < 0 or height < 0 or width < 0 else (height, width)


def _as_config(config):
    if config is None:
        return PreprocessingConfig()
    if isinstance(config, str):
        return PreprocessingConfig.from_preset(config)
    if not isinstance(config, PreprocessingConfig):
        raise TypeError(f"config must be a PreprocessingConfig or a preset name, received {type(config).__name__}")
    return config


def _decode_bytes(data, max_pixels=MAX_IMAGE_PIXELS, name=None):
    """Python decoding of encoded bytes; `name` (a path) is named in the errors."""
    what = name if name is not None else f"the image bytes ({len(data)} bytes starting {bytes(data[:8])!r})"
    fmt, height, width = (int(v) for v in image_header_size(tf.constant(data)))
    if fmt >= 0 and height >= 0 and max_pixels is not None and height * width > max_pixels:
        raise ImageTooLargeError(
            f"{what}: the {IMAGE_FORMATS[fmt]} header says {height} x {width} = {height * width} pixels, "
            f"over the limit of {max_pixels} pixels (max_pixels; default MAX_IMAGE_PIXELS)"
        )
    try:
        return decode_image(data, max_pixels=max_pixels)
    except tf.errors.InvalidArgumentError as err:
        raise ValueError(
            f"cannot decode {what}; JPEG, PNG, BMP, GIF or WebP expected. TensorFlow: {_op_message(err)}"
        ) from None


def _op_message(err):
    """The reason in a TF op error, without the `{{function_node ...}}`, `[Op:...]` and
    `assertion failed: [...]` wrapping."""
    message = err.message.split("}}")[-1].split("[Op:")[0].strip()
    if message.startswith("assertion failed: [") and message.endswith("]"):
        message = message[len("assertion failed: [") : -1]
    return message


def _as_rgb_array(x, max_pixels=MAX_IMAGE_PIXELS):
    """Encoded bytes, a path, a PIL image or an (H, W, 3) array -> an (H, W, 3) uint8/float32 tensor."""
    if isinstance(x, (bytes, bytearray, memoryview)):
        return _decode_bytes(bytes(x), max_pixels)
    if isinstance(x, (str, os.PathLike)):
        with open(x, "rb") as f:
            return _decode_bytes(f.read(), max_pixels, name=os.fspath(x))
    pil_image = sys.modules.get("PIL.Image")  # if PIL was never imported, x is not a PIL image
    if pil_image is not None and isinstance(x, pil_image.Image):
        return tf.convert_to_tensor(np.asarray(x.convert("RGB")))
    if isinstance(x, np.ndarray):
        if x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB array, received shape {x.shape}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"expected a non-empty (H, W, 3) image, received shape {x.shape}")
        if x.dtype == np.uint8:
            return tf.convert_to_tensor(x)
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"expected a uint8 or float array, received dtype {x.dtype}")
        if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 255:
            raise ValueError(
                f"expected float pixels in [0, 255], received values in [{x.min()}, {x.max()}]"
            )
        return tf.convert_to_tensor(x, tf.float32)
    raise TypeError(
        "expected encoded image bytes, a path, a PIL image or an (H, W, 3) numpy array, "
        f"received {type(x).__name__}"
    )


def preprocess_image(x, config=None, max_pixels=MAX_IMAGE_PIXELS):
    """Preprocess one image in Python -> numpy float32 (crop_height, crop_width, 3).

    Args:
        x: encoded JPEG/PNG/BMP/GIF bytes, a path (str or pathlib), a PIL image, or an (H, W, 3)
            RGB numpy array, uint8 or float in [0, 255].
        config: a `PreprocessingConfig` or a preset name; default: Apple's 256 ImageNet
            checkpoints (shortest edge 288, crop 256, BGR in [0, 1]).
        max_pixels: encoded images (bytes, paths) whose header claims more pixels are refused
            with `ImageTooLargeError` (a ValueError naming the file) before decoding; default
            `MAX_IMAGE_PIXELS`, None for no limit.

    Runs `tf_preprocess` eagerly, so it equals what a `tf.data` pipeline or SavedModel signature
    computes from the same pixels.
    """
    return tf_preprocess(_as_rgb_array(x, max_pixels), _as_config(config)).numpy()
