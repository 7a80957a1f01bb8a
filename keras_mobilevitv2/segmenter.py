"""MobileViTV2SemanticSegmenter: backbone -> DeepLabV3 head; logit resizing; the segmentation loss.

Backend-neutral (`keras.ops`, and `backend_ops.resize_bilinear`): no TensorFlow at module level.
"""

import keras
from keras import ops

from keras_mobilevitv2 import backend_ops
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

    def build_head(self, config, fused, dtype):
        return DeepLabV3Head(
            num_labels=config.num_labels,
            aspp_filters=config.aspp_out_channels,
            atrous_rates=config.atrous_rates,
            aspp_dropout=config.aspp_dropout_prob,
            classifier_dropout=config.classifier_dropout_prob,
            fused=fused,
            dtype=dtype,
            name="segmentation_head",
        )

    def __init__(self, config=None, backbone=None, preprocessing=None, fused=False, dtype=None, **kwargs):
        kwargs.setdefault("name", "mobilevitv2_semantic_segmenter")
        super().__init__(config, backbone, preprocessing, fused=fused, dtype=dtype, **kwargs)


def resize_logits(logits, size, align_corners=False):
    """Bilinear resize of (B, h, w, L) logits to `size` = (H, W) (ints or scalar tensors).

    `align_corners=False` is PyTorch's `F.interpolate(..., align_corners=False)` (what transformers
    does before its loss and in post-processing); `True` is ml-cvnets' in-model upsampling. On
    TensorFlow `tf.image.resize`, which exports with dynamic sizes (Keras' own resize does not).
    """
    height, width = size
    if align_corners:
        return resize_bilinear_align_corners(logits, height, width)
    return backend_ops.resize_bilinear(logits, height, width)


@keras.saving.register_keras_serializable(package="keras_mobilevitv2")
class ResizeLogits(keras.layers.Layer):
    """Layer form of `resize_logits`: resizes logits to the spatial size of a reference tensor."""

    def __init__(self, align_corners=False, **kwargs):
        super().__init__(**kwargs)
        self.align_corners = bool(align_corners)

    def build(self, logits_shape, reference_shape):
        self.built = True

    def call(self, logits, reference):
        shape = ops.shape(reference)
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
    shape = ops.shape(labels)
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
