"""MobileViTV2SemanticSegmenter: backbone -> DeepLabV3 head; logit resizing; the segmentation loss."""

import keras
import tensorflow as tf
from keras import ops

from keras_mobilevitv2.layers import DeepLabV3Head, resize_bilinear_align_corners
from keras_mobilevitv2.task import MobileViTV2Task


@keras.saving.register_keras_serializable(package="keras_mobilevitv2")
class MobileViTV2SemanticSegmenter(MobileViTV2Task):
    """DeepLabV3 on MobileViTV2 (Hugging Face's `MobileViTV2ForSemanticSegmentation`).

    Input `pixel_values` (B, H, W, C); output logits (B, H/os, W/os, num_labels) with os =
    `config.output_stride` (8, 16 or 32). `resize_logits` brings them to the image size.

    Args:
        config: a `MobileViTV2Config` (or dict): output_stride, aspp_out_channels, atrous_rates,
            aspp_dropout_prob, classifier_dropout_prob, num_labels / id2label.
        backbone: an existing `MobileViTV2Backbone` (its config must agree); built from `config`
            (with `expand_output=False`) when None.
        preprocessing: the `PreprocessingConfig` (or dict) images need before this model; saved
            with it and used by `export` and `predict`.
    """

    head_input = "last_hidden_state"
    expand_output = False

    task_name = "semantic_segmentation"
    hf_architecture = "MobileViTV2ForSemanticSegmentation"
    default_preset = "mobilevitv2-1.0-voc-deeplabv3"
    default_preprocessing_preset = "mobilevitv2-1.0-voc-deeplabv3"
    summary_fields = (
        "width_multiplier", "n_attn_blocks", "output_stride", "compat", "image_size",
        "aspp_out_channels", "atrous_rates", "aspp_dropout_prob",
    )

    @classmethod
    def default_loss(cls):
        """`SegmentationLoss`: per-pixel cross-entropy of the logits resized to the mask, 255 ignored."""
        return SegmentationLoss()

    def build_head(self, config):
        return DeepLabV3Head(
            num_labels=config.num_labels,
            aspp_filters=config.aspp_out_channels,
            atrous_rates=config.atrous_rates,
            aspp_dropout=config.aspp_dropout_prob,
            classifier_dropout=config.classifier_dropout_prob,
            name="segmentation_head",
        )

    def __init__(self, config=None, backbone=None, preprocessing=None, **kwargs):
        kwargs.setdefault("name", "mobilevitv2_semantic_segmenter")
        super().__init__(config, backbone, preprocessing, **kwargs)


def resize_logits(logits, size, align_corners=False):
    """Bilinear resize of (B, h, w, L) logits to `size` = (H, W) (ints or scalar tensors).

    `align_corners=False` is PyTorch's `F.interpolate(..., align_corners=False)` (what transformers
    does before its loss and in post-processing); `True` is ml-cvnets' in-model upsampling. Uses
    `tf.image.resize`, which exports with dynamic sizes (Keras' own resize does not).
    """
    height, width = size
    if align_corners:
        return resize_bilinear_align_corners(logits, height, width)
    resized = tf.image.resize(logits, tf.stack([height, width]), method="bilinear", antialias=False)
    return tf.cast(resized, logits.dtype)


# Floats of resized logits `label_map` holds at once (64 MB), whatever the image size.
LABEL_MAP_TILE_FLOATS = 1 << 24


def label_map(logits, size, tile_floats=LABEL_MAP_TILE_FLOATS):
    """(B, h, w, L) logits -> (B, H, W) int32: the argmax of `resize_logits(logits, size)`, the
    same numbers, without holding the (B, H, W, L) float resize.

    Bilinear (align_corners=False, half-pixel centres) is separable and each output row depends
    on two source rows: over tiles of output rows (`tile_floats` floats of B * rows * W * L), the
    source rows a tile needs are resized along the width with `tf.image.resize` (the same
    `ResizeBilinear` arithmetic; the height unchanged is an exact copy) and blended along the
    height as the kernel does (`top + (bottom - top) * lerp`, `in = (y + 0.5) * h / H - 0.5`).
    """
    height, width = (tf.cast(v, tf.int32) for v in size)
    shape = tf.shape(logits)
    batch, in_height, num_labels = shape[0], shape[1], shape[3]
    rows_per_tile = tf.maximum(1, tile_floats // tf.maximum(batch * width * num_labels, 1))
    scale = tf.cast(in_height, tf.float32) / tf.cast(height, tf.float32)
    num_tiles = (height + rows_per_tile - 1) // rows_per_tile

    def tile(t):
        rows = tf.range(t * rows_per_tile, tf.minimum((t + 1) * rows_per_tile, height))
        source = (tf.cast(rows, tf.float32) + 0.5) * scale - 0.5
        floor = tf.floor(source)
        lower = tf.maximum(tf.cast(floor, tf.int32), 0)
        upper = tf.minimum(tf.cast(tf.math.ceil(source), tf.int32), in_height - 1)
        lerp = (source - floor)[None, :, None, None]
        first, last = lower[0], upper[-1]
        strip = logits[:, first : last + 1]  # (B, rows needed, w, L)
        strip = tf.image.resize(strip, tf.stack([last + 1 - first, width]), method="bilinear", antialias=False)
        top = tf.gather(strip, lower - first, axis=1)
        bottom = tf.gather(strip, upper - first, axis=1)
        labels = tf.argmax(top + (bottom - top) * lerp, axis=-1, output_type=tf.int32)  # (B, rows, W)
        return tf.transpose(labels, [1, 0, 2])  # (rows, B, W): the TensorArray concatenates rows

    tiles = tf.TensorArray(tf.int32, size=num_tiles, infer_shape=False, element_shape=[None, None, None])
    _, tiles = tf.while_loop(
        lambda t, _: t < num_tiles, lambda t, ta: (t + 1, ta.write(t, tile(t))), (tf.constant(0), tiles)
    )
    return tf.transpose(tiles.concat(), [1, 0, 2])  # (H, B, W) -> (B, H, W)


@keras.saving.register_keras_serializable(package="keras_mobilevitv2")
class ResizeLogits(keras.layers.Layer):
    """Layer form of `resize_logits`: resizes logits to the spatial size of a reference tensor."""

    def __init__(self, align_corners=False, **kwargs):
        super().__init__(**kwargs)
        self.align_corners = bool(align_corners)

    def call(self, logits, reference):
        shape = tf.shape(reference)
        return resize_logits(logits, (shape[1], shape[2]), align_corners=self.align_corners)

    def compute_output_shape(self, logits_shape, reference_shape):
        return (logits_shape[0], reference_shape[1], reference_shape[2], logits_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(align_corners=self.align_corners)
        return config


def segmentation_loss(labels, logits, ignore_index=255):
    """Mean cross-entropy over the pixels whose label is not `ignore_index`.

    As transformers: logits (B, h, w, L) are first resized bilinearly (align_corners=False) to the
    label map's size (B, H, W). Returns 0 when every pixel is ignored.
    """
    labels = ops.convert_to_tensor(labels)
    if len(labels.shape) == 4:
        labels = ops.squeeze(labels, -1)
    shape = tf.shape(labels)
    logits = resize_logits(logits, (shape[1], shape[2]))
    labels = ops.cast(labels, "int32")
    valid = ops.not_equal(labels, ignore_index)
    safe_labels = ops.where(valid, labels, ops.zeros_like(labels))
    per_pixel = keras.losses.sparse_categorical_crossentropy(safe_labels, ops.cast(logits, "float32"), from_logits=True)
    valid_f = ops.cast(valid, "float32")
    return ops.sum(per_pixel * valid_f) / ops.maximum(ops.sum(valid_f), 1.0)


@keras.saving.register_keras_serializable(package="keras_mobilevitv2")
class SegmentationLoss(keras.losses.Loss):
    """`segmentation_loss` as a Keras loss for `model.compile` / `fit`."""

    def __init__(self, ignore_index=255, name="segmentation_loss", **kwargs):
        kwargs.pop("reduction", None)
        super().__init__(name=name, reduction="sum", **kwargs)
        self.ignore_index = int(ignore_index)

    def call(self, y_true, y_pred):
        return segmentation_loss(y_true, y_pred, ignore_index=self.ignore_index)

    def get_config(self):
        return {"ignore_index": self.ignore_index, "name": self.name}
