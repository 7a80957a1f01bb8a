"""MobileViTV2Backbone: the stem and the five stages as a functional Keras model."""

import keras

from keras_mobilevitv2.config import MobileViTV2Config, stage_dilations, stage_widths
from keras_mobilevitv2.fusion import dtype_config, fuse_layers, resolve_dtype
from keras_mobilevitv2.layers import ConvBN, MobileNetStage, MobileViTV2Block

# Names of the five stage outputs, in the reference's `hidden_states` order.
# (transformers' `encoder.layer.{i}`, "." spelled "_": Keras' torch backend refuses "." in names.)
STAGE_LAYER_NAMES = tuple(f"encoder_layer_{i}" for i in range(5))


def _as_config(config):
    if isinstance(config, MobileViTV2Config):
        return config
    if isinstance(config, dict):
        return MobileViTV2Config.from_dict(config)
    raise ValueError(f"config must be a MobileViTV2Config or a dict, received {type(config).__name__}")


def build_backbone_graph(config, inputs, fused=False, dtype=None):
    """Apply the stem and the five stages to `inputs`; returns the five stage outputs.

    Layer names are transformers' module paths with "_" for "." (`conv_stem`, `encoder_layer_0` ..
    `encoder_layer_4`). `fused`: the inference form of every layer; `dtype`: their dtype policy.
    """
    widths = stage_widths(config)
    dilations = stage_dilations(config)
    act = config.hidden_act
    common = dict(fused=fused, dtype=dtype)
    x = ConvBN(widths["stem"], 3, strides=2, activation=act, name="conv_stem", **common)(inputs)
    stages = []
    ratio = config.expand_ratio
    x = MobileNetStage(widths["stage1"], 1, strides=1, expand_ratio=ratio, activation=act, name=STAGE_LAYER_NAMES[0], **common)(x)
    stages.append(x)
    x = MobileNetStage(widths["stage2"], 2, strides=2, expand_ratio=ratio, activation=act, name=STAGE_LAYER_NAMES[1], **common)(x)
    stages.append(x)
    for stage, n_blocks in zip((3, 4, 5), config.n_attn_blocks):
        strides, down_dilation, local_dilation = dilations[stage]
        x = MobileViTV2Block(
            out_channels=widths[f"stage{stage}"],
            attn_unit_dim=widths[f"attn{stage}"],
            n_attn_blocks=n_blocks,
            ffn_multiplier=config.ffn_multiplier,
            downsample_strides=strides,
            downsample_dilation=down_dilation,
            local_dilation=local_dilation,
            patch_size=config.patch_hw,
            conv_kernel_size=config.conv_kernel_size,
            expand_ratio=config.expand_ratio,
            activation=act,
            attn_dropout=config.attn_dropout,
            ffn_dropout=config.ffn_dropout,
            layer_norm_eps=config.layer_norm_eps,
            compat=config.compat,
            name=STAGE_LAYER_NAMES[stage - 1],
            **common,
        )(x)
        stages.append(x)
    return stages


@keras.saving.register_keras_serializable(package="keras_mobilevitv2")
class MobileViTV2Backbone(keras.Model):
    """MobileViTV2 feature extractor (Hugging Face's `MobileViTV2Model`), channels-last.

    Input: `pixel_values` (B, H, W, num_channels), H and W free, scaled as the preprocessing says
    (rescaled to [0, 1], BGR for Apple's checkpoints). Output: a dict with
    - `last_hidden_state`: (B, h, w, C) the stage-5 feature map (h = H / output_stride);
    - `pooler_output`: (B, C) its global average (left out with `expand_output=False`, as in the
      reference's segmentation model);
    - `hidden_states`: the five stage outputs, stage 1 first.

    Dense heads tap stages by name: `backbone.get_layer("encoder_layer_3").output`, or
    `backbone.stage_outputs`.

    Args:
        config: a `MobileViTV2Config` (or its dict).
        expand_output: include `pooler_output`.
        fused: build the inference form of every layer (`keras_mobilevitv2.fusion`).
        dtype: dtype policy (a name, `keras.DTypePolicy` or `keras.dtype_policies.DTypePolicyMap`)
            of every layer; the global policy when None.
    """

    # ------------------------------------------------ task attributes (keras_mobilevitv2.tasks)
    task_name = "backbone"
    hf_architecture = "MobileViTV2Model"
    default_preset = "mobilevitv2-1.0-imagenet1k-256"
    default_preprocessing_preset = "mobilevitv2-1.0-imagenet1k-256"
    summary_fields = ("width_multiplier", "n_attn_blocks", "output_stride", "compat", "image_size")  # `info`

    @classmethod
    def default_loss(cls):
        return None  # a feature extractor has no loss of its own

    def __init__(self, config=None, expand_output=True, fused=False, dtype=None, **kwargs):
        # ----------------------------------------------------------- config
        config = _as_config(config if config is not None else MobileViTV2Config())
        dtype = resolve_dtype(dtype)
        # ------------------------------------------------------ functional graph
        inputs = keras.Input(shape=(None, None, config.num_channels), name="pixel_values")
        stages = build_backbone_graph(config, inputs, fused=fused, dtype=dtype)
        outputs = {"last_hidden_state": stages[-1], "hidden_states": tuple(stages)}
        if expand_output:
            outputs["pooler_output"] = keras.layers.GlobalAveragePooling2D(dtype=dtype, name="pooler")(stages[-1])
        kwargs.setdefault("name", "mobilevitv2")
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)
        # ----------------------------------------------------------- attributes
        self.config = config
        self.expand_output = expand_output
        self.fused = bool(fused)
        if dtype is not None:  # the functional constructor keeps no dtype of its own
            self._dtype_policy = dtype

    @property
    def stage_outputs(self):
        """{"stage1": KerasTensor, ..., "stage5": KerasTensor}: symbolic stage outputs for dense heads."""
        return {f"stage{i + 1}": self.get_layer(name).output for i, name in enumerate(STAGE_LAYER_NAMES)}

    def fuse(self):
        """Turn every layer into its inference form, in place (`keras_mobilevitv2.fusion.fuse`)."""
        fuse_layers(self)

    def get_config(self):
        return {
            "config": self.config.to_dict(),
            "expand_output": self.expand_output,
            "fused": self.fused,
            "dtype": dtype_config(self),
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
