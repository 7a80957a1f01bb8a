"""The MobileViTV2 image processor, defined once for Python and for TF graphs.

Reference: transformers' `MobileViTImageProcessor` (`MobileViTImageProcessorPil` without
torchvision): resize so the shortest edge is `shortest_edge`, centre crop to
`crop_height` x `crop_width`, rescale by 1/255, flip RGB -> BGR (Apple's checkpoints were trained
on BGR). No mean/std normalisation.

`normalize_pixels` is the one definition of scaling and channel order; `tf_preprocess` (in-graph,
one image) and `preprocess_image` (Python) are built on it.
"""

import dataclasses
import math

import tensorflow as tf

# Resampling methods we support, with their PIL codes (transformers' `resample` field).
RESAMPLE_PIL_CODES = {"nearest": 0, "bilinear": 2, "bicubic": 3}
_PIL_CODE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}

DEFAULT_PRESET = "mobilevitv2-1.0-imagenet1k-256"


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
        return cls(**d)

    @classmethod
    def from_hf_dict(cls, d):
        """Read a transformers `preprocessor_config.json` dict (or a preset's `preprocessing`).

        `size` may be `{"shortest_edge": n}` or an int (old feature extractors), `crop_size`
        `{"height": h, "width": w}` or an int, `resample` a PIL code or a method name. Fields the
        MobileViT processor does not use (`image_mean`, `do_reduce_labels`, ...) are ignored.
        """
        kwargs = {}
        if "size" in d:
            size = d["size"]
            if _is_int(size):
                kwargs["shortest_edge"] = size
            elif isinstance(size, dict) and set(size) == {"shortest_edge"}:
                kwargs["shortest_edge"] = size["shortest_edge"]
            else:
                raise ValueError(f'size must be {{"shortest_edge": int}} or an int, received size={size!r}')
        if "crop_size" in d:
            crop = d["crop_size"]
            if _is_int(crop):
                kwargs["crop_height"] = kwargs["crop_width"] = crop
            elif isinstance(crop, dict) and set(crop) == {"height", "width"}:
                kwargs["crop_height"], kwargs["crop_width"] = crop["height"], crop["width"]
            else:
                raise ValueError(
                    f'crop_size must be {{"height": int, "width": int}} or an int, received crop_size={crop!r}'
                )
        if "resample" in d:
            kwargs["resample"] = _resample_name(d["resample"])
        for name in ("do_resize", "do_center_crop", "do_rescale", "rescale_factor", "do_flip_channel_order"):
            if name in d:
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
        name = value
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
