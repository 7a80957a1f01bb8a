"""MobileViTV2ImageClassifier: backbone -> global average pool -> linear classifier."""

import keras

from keras_mobilevitv2.task import MobileViTV2Task


@keras.saving.register_keras_serializable(package="keras_mobilevitv2")
class MobileViTV2ImageClassifier(MobileViTV2Task):
    """ImageNet-style classifier (Hugging Face's `MobileViTV2ForImageClassification`).

    Input `pixel_values` (B, H, W, C); output logits (B, num_labels). Labels are `config.id2label`.

    Args:
        config: a `MobileViTV2Config` (or dict); `num_labels` / `id2label` size the head.
        backbone: an existing `MobileViTV2Backbone` to put the head on (fine-tuning); built from
            `config` when None.
        preprocessing: the `PreprocessingConfig` (or dict) images need before this model; saved
            with it and used by `export` and `predict`.
    """

    head_input = "pooler_output"
    expand_output = True

    task_name = "image_classification"
    hf_architecture = "MobileViTV2ForImageClassification"
    default_preset = "mobilevitv2-1.0-imagenet1k-256"
    default_preprocessing_preset = "mobilevitv2-1.0-imagenet1k-256"
    summary_fields = ("width_multiplier", "n_attn_blocks", "compat", "image_size")

    @classmethod
    def default_loss(cls):
        """Sparse categorical cross-entropy of the logits (labels: class indices)."""
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def build_head(self, config, fused, dtype):
        return keras.layers.Dense(config.num_labels, dtype=dtype, name="classifier")

    def __init__(self, config=None, backbone=None, preprocessing=None, fused=False, dtype=None, **kwargs):
        kwargs.setdefault("name", "mobilevitv2_image_classifier")
        super().__init__(config, backbone, preprocessing, fused=fused, dtype=dtype, **kwargs)
