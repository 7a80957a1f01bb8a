"""MobileViTV2ImageClassifier: backbone -> global average pool -> linear classifier."""

import keras

from keras_mobilevitv2.backbone import MobileViTV2Backbone, _as_config


def _resolve_backbone(config, backbone, expand_output):
    """The backbone to wrap: the given one (its config must agree), or a new one from `config`."""
    if backbone is None:
        if config is None:
            raise ValueError("give a `config` (MobileViTV2Config or dict) or a `backbone`")
        config = _as_config(config)
        return config, MobileViTV2Backbone(config, expand_output=expand_output)
    if isinstance(backbone, dict):
        backbone = keras.saving.deserialize_keras_object(backbone)
    if not isinstance(backbone, MobileViTV2Backbone):
        raise ValueError(f"backbone must be a MobileViTV2Backbone, received {type(backbone).__name__}")
    config = backbone.config if config is None else _as_config(config)
    architecture = lambda c: {k: v for k, v in c.to_dict().items() if k not in _HEAD_FIELDS}  # noqa: E731
    if architecture(config) != architecture(backbone.config):
        diff = sorted(k for k, v in architecture(config).items() if architecture(backbone.config).get(k) != v)
        raise ValueError(f"config and backbone.config disagree on backbone fields {diff}")
    return config, backbone


def _resolve_preprocessing(preprocessing):
    """None, a PreprocessingConfig, or its dict (as stored in a saved model's config)."""
    if preprocessing is None:
        return None
    from keras_mobilevitv2.preprocessing import PreprocessingConfig

    if isinstance(preprocessing, PreprocessingConfig):
        return preprocessing
    if isinstance(preprocessing, dict):
        return PreprocessingConfig.from_dict(preprocessing)
    raise ValueError(f"preprocessing must be a PreprocessingConfig or a dict, received {type(preprocessing).__name__}")


def task_model_config(model):
    """The `get_config` of a task model: exactly its constructor's arguments."""
    return {
        "config": model.config.to_dict(),
        "backbone": keras.saving.serialize_keras_object(model.backbone),
        "preprocessing": None if model.preprocessing is None else model.preprocessing.to_dict(),
        "name": model.name,
        "trainable": model.trainable,
    }


# Config fields the backbone does not use (heads, labels, training).
_HEAD_FIELDS = frozenset(
    {
        "id2label", "label2id", "classifier_dropout_prob", "aspp_out_channels", "atrous_rates",
        "aspp_dropout_prob", "semantic_loss_ignore_index", "initializer_range", "image_size",
    }
)


@keras.saving.register_keras_serializable(package="keras_mobilevitv2")
class MobileViTV2ImageClassifier(keras.Model):
    """ImageNet-style classifier (Hugging Face's `MobileViTV2ForImageClassification`).

    Input `pixel_values` (B, H, W, C); output logits (B, num_labels). Labels are `config.id2label`.

    Args:
        config: a `MobileViTV2Config` (or dict); `num_labels` / `id2label` size the head.
        backbone: an existing `MobileViTV2Backbone` to put the head on (fine-tuning); built from
            `config` when None.
        preprocessing: the `PreprocessingConfig` (or dict) images need before this model; saved
            with it and used by `export` and `predict`.
    """

    def __init__(self, config=None, backbone=None, preprocessing=None, **kwargs):
        # ----------------------------------------------------------- layers
        config, backbone = _resolve_backbone(config, backbone, expand_output=True)
        if not backbone.expand_output:
            raise ValueError("the classifier needs a backbone built with expand_output=True")
        if config.num_labels < 1:
            raise ValueError(f"num_labels must be at least 1 for a classifier, received {config.num_labels}")
        classifier = keras.layers.Dense(config.num_labels, name="classifier")
        # ------------------------------------------------------ functional graph
        inputs = keras.Input(shape=(None, None, config.num_channels), name="pixel_values")
        features = backbone(inputs)
        logits = classifier(features["pooler_output"])
        kwargs.setdefault("name", "mobilevitv2_image_classifier")
        super().__init__(inputs=inputs, outputs=logits, **kwargs)
        # ----------------------------------------------------------- attributes
        self.config = config
        self.backbone = backbone
        self.preprocessing = _resolve_preprocessing(preprocessing)

    def get_config(self):
        return task_model_config(self)

    @classmethod
    def from_config(cls, config):
        return cls(**config)
