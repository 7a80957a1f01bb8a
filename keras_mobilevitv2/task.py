"""MobileViTV2Task: what the classifier and the segmenter share (a backbone, a head, preprocessing)."""

import keras

from keras_mobilevitv2.backbone import MobileViTV2Backbone, _as_config
from keras_mobilevitv2.fusion import dtype_config, fuse_layers, resolve_dtype

# Config fields the backbone does not use (heads, labels, training).
HEAD_FIELDS = frozenset(
    {
        "id2label", "label2id", "classifier_dropout_prob", "aspp_out_channels", "atrous_rates",
        "aspp_dropout_prob", "semantic_loss_ignore_index", "initializer_range", "image_size",
    }
)


def _architecture(config):
    return {k: v for k, v in config.to_dict().items() if k not in HEAD_FIELDS}


def resolve_backbone(config, backbone, expand_output, fused=False, dtype=None):
    """The backbone to wrap: the given one (its config must agree with `config`), or a new one."""
    if backbone is None:
        if config is None:
            raise ValueError("give a `config` (MobileViTV2Config or dict) or a `backbone`")
        config = _as_config(config)
        return config, MobileViTV2Backbone(config, expand_output=expand_output, fused=fused, dtype=dtype)
    if isinstance(backbone, dict):
        backbone = keras.saving.deserialize_keras_object(backbone)
    if not isinstance(backbone, MobileViTV2Backbone):
        raise ValueError(f"backbone must be a MobileViTV2Backbone, received {type(backbone).__name__}")
    if backbone.fused != bool(fused):
        raise ValueError(f"fused={fused} but the backbone was built with fused={backbone.fused}")
    config = backbone.config if config is None else _as_config(config)
    ours, theirs = _architecture(config), _architecture(backbone.config)
    if ours != theirs:
        diff = sorted(k for k, v in ours.items() if theirs.get(k) != v)
        raise ValueError(f"config and backbone.config disagree on backbone fields {diff}")
    return config, backbone


def resolve_preprocessing(preprocessing):
    """None, a PreprocessingConfig, or its dict (as stored in a saved model's config)."""
    if preprocessing is None:
        return None
    from keras_mobilevitv2.preprocessing import PreprocessingConfig

    if isinstance(preprocessing, PreprocessingConfig):
        return preprocessing
    if isinstance(preprocessing, dict):
        return PreprocessingConfig.from_dict(preprocessing)
    raise ValueError(f"preprocessing must be a PreprocessingConfig or a dict, received {type(preprocessing).__name__}")


class MobileViTV2Task(keras.Model):
    """A head on a MobileViTV2Backbone. Subclasses define `build_head(config, fused, dtype)` and
    `head_input`, and the task attributes `keras_mobilevitv2.tasks` describes (`task_name`,
    `hf_architecture`, `default_preset`, `default_preprocessing_preset`, `default_loss()`).

    `fused`: build the inference form of every layer (`keras_mobilevitv2.fusion`); `dtype`: the
    dtype policy (name, `keras.DTypePolicy` or `DTypePolicyMap`) of every layer.
    """

    head_input = None  # key of the backbone output the head reads
    expand_output = True  # whether the backbone computes the pooled output

    # ------------------------------------------------ task attributes (keras_mobilevitv2.tasks)
    task_name = None
    hf_architecture = None
    default_preset = None
    default_preprocessing_preset = None
    summary_fields = ()  # the config fields `mobilevitv2 info` shows: those the task's model uses

    @classmethod
    def default_loss(cls):
        """The Keras loss of this task's outputs (what `compile(loss="auto")` uses)."""
        raise NotImplementedError

    def build_head(self, config, fused, dtype):
        raise NotImplementedError

    def compile(self, optimizer="rmsprop", loss="auto", **kwargs):
        """`keras.Model.compile`; `loss="auto"` (the default) is the task's `default_loss()`."""
        if isinstance(loss, str) and loss == "auto":
            loss = self.default_loss()
        super().compile(optimizer=optimizer, loss=loss, **kwargs)

    def __init__(self, config=None, backbone=None, preprocessing=None, fused=False, dtype=None, **kwargs):
        # ----------------------------------------------------------- layers
        dtype = resolve_dtype(dtype)
        config, backbone = resolve_backbone(config, backbone, self.expand_output, fused=fused, dtype=dtype)
        if self.expand_output and not backbone.expand_output:
            raise ValueError(f"{type(self).__name__} needs a backbone built with expand_output=True")
        if config.num_labels < 1:
            raise ValueError(f"num_labels must be at least 1 for {type(self).__name__}, received {config.num_labels}")
        head = self.build_head(config, fused=bool(fused), dtype=dtype)
        # ------------------------------------------------------ functional graph
        inputs = keras.Input(shape=(None, None, config.num_channels), name="pixel_values")
        outputs = head(backbone(inputs)[self.head_input])
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)
        # ----------------------------------------------------------- attributes
        self.config = config
        self.backbone = backbone
        self.preprocessing = resolve_preprocessing(preprocessing)
        self.fused = bool(fused)
        if dtype is not None:  # the functional constructor keeps no dtype of its own
            self._dtype_policy = dtype

    def fuse(self):
        """Turn every layer into its inference form, in place (`keras_mobilevitv2.fusion`)."""
        fuse_layers(self)

    def get_config(self):
        return {
            "config": self.config.to_dict(),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "preprocessing": None if self.preprocessing is None else self.preprocessing.to_dict(),
            "fused": self.fused,
            "dtype": dtype_config(self),
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

