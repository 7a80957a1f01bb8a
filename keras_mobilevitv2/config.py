"""MobileViTV2Config: the hyper-parameters, under Hugging Face's `config.json` field names.

Every field of transformers' `MobileViTV2Config` is here with the same name and default, so a
Hugging Face `config.json` reads as it is. Two fields are ours:

- `compat`: `"cvnets"` (default) follows Apple's ml-cvnets / timm architecture; `"transformers"`
  reproduces transformers' implementation, which differs in two places (see `COMPAT_MODES`).
- `id2label` / `label2id` / `num_labels` follow transformers' `PretrainedConfig`.
"""

import copy
import json
import math
import os

COMPAT_MODES = {
    # At output_stride 8/16 the local depthwise 3x3 conv of a dilated MobileViTV2 block uses the
    # stage's dilation; a feature map not divisible by the patch size is resized (bilinear,
    # align_corners=True) up to the next multiple before the local conv.
    "cvnets": "Apple ml-cvnets / timm",
    # The local 3x3 conv is never dilated; unfold drops the remainder rows/columns and fold leaves
    # zeros there.
    "transformers": "Hugging Face transformers",
}

VALID_OUTPUT_STRIDES = (8, 16, 32)
VALID_ACTIVATIONS = ("swish", "silu", "relu", "gelu", "relu6", "hard_swish", "tanh", "sigmoid")

# Upper bounds of the hyper-parameters that size memory, checked before anything is built (a
# config.json or .keras file with num_labels 1e12 or n_attn_blocks [1e9, 4, 3] is refused, not
# allocated). The released models are far inside them (1000 labels, width <= 2, <= 4 blocks, patch 2).
MAX_NUM_LABELS = 100_000
MAX_WIDTH_MULTIPLIER = 4.0
MAX_ATTN_BLOCKS = 64  # per stage
MAX_ATTN_UNIT_DIM = 4096  # per stage, before the width multiplier
MAX_PATCH_SIZE = 16
MAX_IMAGE_SIZE = 8192
MAX_NUM_CHANNELS = 64
MAX_KERNEL_SIZE = 31
MAX_EXPAND_RATIO = 16
MAX_FFN_MULTIPLIER = 16
MAX_ASPP_OUT_CHANNELS = 4096
MAX_ATROUS_RATE = 1024

# Fields whose value is a list of one entry per MobileViTV2 stage (stages 3, 4, 5).
_PER_STAGE_FIELDS = ("n_attn_blocks", "base_attn_unit_dims")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _as_list(name, value):
    """A per-stage field as a list; anything but a list or tuple is an error naming the field."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of 3 integers, received {_short(value)}")
    return list(value)


def _check_at_most(name, value, bound, constant):
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if v > bound:
            raise ValueError(f"{name} must be at most {bound} ({constant}), received {_short(value)}")


def _default_id2label(num_labels):
    return {i: f"LABEL_{i}" for i in range(num_labels)}


class MobileViTV2Config:
    """The hyper-parameters of a MobileViTV2 model.

    Args:
        num_channels: channels of the input image.
        image_size: the image size the model was trained at (informational; inputs may be any size).
        patch_size: height and width of a patch in the MobileViTV2 blocks.
        expand_ratio: expansion of the inverted residual blocks.
        hidden_act: activation of the convolutional layers ("swish" in all released models).
        conv_kernel_size: kernel of the local depthwise conv in the MobileViTV2 blocks.
        output_stride: 32 for classification, 8 or 16 to dilate the last stages for segmentation.
        classifier_dropout_prob: dropout before the segmentation classifier (Dropout2d).
        initializer_range: std of the normal initializer, as in transformers.
        layer_norm_eps: epsilon of the GroupNorm(1 group) "layer norms".
        aspp_out_channels: channels of the DeepLabV3 ASPP module.
        atrous_rates: the three dilation rates of the ASPP branches.
        aspp_dropout_prob: dropout after the ASPP projection.
        semantic_loss_ignore_index: label value the segmentation loss ignores.
        n_attn_blocks: transformer layers in stages 3, 4, 5.
        base_attn_unit_dims: attention widths of stages 3, 4, 5 before the width multiplier.
        width_multiplier: the model width (0.5 .. 2.0 for the released checkpoints).
        ffn_multiplier: FFN hidden width as a multiple of the attention width.
        attn_dropout: dropout on the attention context scores.
        ffn_dropout: dropout inside the FFN.
        num_labels: classes of the classification / segmentation head.
        id2label, label2id: class names; keys of id2label may be str (as in JSON) or int.
        compat: "cvnets" (default) or "transformers", see `COMPAT_MODES`.
    """

    model_type = "mobilevitv2"

    def __init__(
        self,
        num_channels=3,
        image_size=256,
        patch_size=2,
        expand_ratio=2.0,
        hidden_act="swish",
        conv_kernel_size=3,
        output_stride=32,
        classifier_dropout_prob=0.1,
        initializer_range=0.02,
        layer_norm_eps=1e-5,
        aspp_out_channels=512,
        atrous_rates=(6, 12, 18),
        aspp_dropout_prob=0.1,
        semantic_loss_ignore_index=255,
        n_attn_blocks=(2, 4, 3),
        base_attn_unit_dims=(128, 192, 256),
        width_multiplier=1.0,
        ffn_multiplier=2,
        attn_dropout=0.0,
        ffn_dropout=0.0,
        num_labels=None,
        id2label=None,
        label2id=None,
        compat="cvnets",
    ):
        self.num_channels = num_channels
        self.image_size = image_size
        self.patch_size = patch_size
        self.expand_ratio = expand_ratio
        self.hidden_act = hidden_act
        self.conv_kernel_size = conv_kernel_size
        self.output_stride = output_stride
        self.classifier_dropout_prob = classifier_dropout_prob
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.aspp_out_channels = aspp_out_channels
        self.atrous_rates = _as_list("atrous_rates", atrous_rates)
        self.aspp_dropout_prob = aspp_dropout_prob
        self.semantic_loss_ignore_index = semantic_loss_ignore_index
        self.n_attn_blocks = _as_list("n_attn_blocks", n_attn_blocks)
        self.base_attn_unit_dims = _as_list("base_attn_unit_dims", base_attn_unit_dims)
        self.width_multiplier = width_multiplier
        self.ffn_multiplier = ffn_multiplier
        self.attn_dropout = attn_dropout
        self.ffn_dropout = ffn_dropout
        self.compat = compat

        if num_labels is not None and _is_int(num_labels) and num_labels > MAX_NUM_LABELS:
            raise ValueError(f"num_labels must be at most {MAX_NUM_LABELS} (MAX_NUM_LABELS), received {num_labels!r}")
        if id2label is not None:
            if not isinstance(id2label, dict):
                raise ValueError(f"id2label must be a dict of class index -> name, received {_short(id2label)}")
            if len(id2label) > MAX_NUM_LABELS:
                raise ValueError(
                    f"id2label must have at most {MAX_NUM_LABELS} entries (MAX_NUM_LABELS), received {len(id2label)}"
                )
            bad = [k for k in id2label if not (_is_int(k) or (isinstance(k, str) and k.strip().lstrip("-").isdigit()))]
            if bad:
                raise ValueError(f"id2label keys must be class indices, received key {bad[0]!r}")
            self.id2label = {int(k): str(v) for k, v in id2label.items()}
            if num_labels is not None and num_labels != len(self.id2label):
                raise ValueError(
                    f"num_labels={num_labels} disagrees with id2label, which has {len(self.id2label)} entries"
                )
        else:
            n = 2 if num_labels is None else num_labels  # transformers' default is 2 labels
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ValueError(f"num_labels must be a non-negative integer, received {num_labels!r}")
            self.id2label = _default_id2label(n)
        if sorted(self.id2label) != list(range(len(self.id2label))):
            raise ValueError(f"id2label keys must be 0 .. num_labels-1, received {sorted(self.id2label)}")
        if label2id is not None:
            if not isinstance(label2id, dict) or not all(_is_int(v) for v in label2id.values()):
                raise ValueError(f"label2id must be a dict of class name -> index, received {_short(label2id)}")
            self.label2id = {str(k): int(v) for k, v in label2id.items()}
        else:
            self.label2id = {name: i for i, name in self.id2label.items()}
        self.validate()

    # ------------------------------------------------------------------ derived
    @property
    def num_labels(self):
        return len(self.id2label)

    @property
    def patch_hw(self):
        """(patch height, patch width)."""
        if isinstance(self.patch_size, (list, tuple)):
            return int(self.patch_size[0]), int(self.patch_size[1])
        return int(self.patch_size), int(self.patch_size)

    @property
    def image_hw(self):
        if isinstance(self.image_size, (list, tuple)):
            return int(self.image_size[0]), int(self.image_size[1])
        return int(self.image_size), int(self.image_size)

    # --------------------------------------------------------------- validation
    def validate(self):
        def positive_int(name):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, received {value!r}")

        def positive_number(name):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{name} must be a positive number, received {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, received {value!r}")

        def probability(name):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1), received {value!r}")

        for name in ("num_channels", "conv_kernel_size", "aspp_out_channels", "ffn_multiplier"):
            positive_int(name)
        for name in ("expand_ratio", "width_multiplier", "layer_norm_eps", "initializer_range"):
            positive_number(name)
        for name in ("classifier_dropout_prob", "aspp_dropout_prob", "attn_dropout", "ffn_dropout"):
            probability(name)
        if self.conv_kernel_size % 2 != 1:
            raise ValueError(f"conv_kernel_size must be odd, received {self.conv_kernel_size!r}")
        for name in ("patch_size", "image_size"):
            value = getattr(self, name)
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            if len(values) not in (1, 2) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values
            ):
                raise ValueError(f"{name} must be a positive integer or a pair of them, received {value!r}")
        for name, bound, constant in (
            ("num_channels", MAX_NUM_CHANNELS, "MAX_NUM_CHANNELS"),
            ("conv_kernel_size", MAX_KERNEL_SIZE, "MAX_KERNEL_SIZE"),
            ("aspp_out_channels", MAX_ASPP_OUT_CHANNELS, "MAX_ASPP_OUT_CHANNELS"),
            ("ffn_multiplier", MAX_FFN_MULTIPLIER, "MAX_FFN_MULTIPLIER"),
            ("expand_ratio", MAX_EXPAND_RATIO, "MAX_EXPAND_RATIO"),
            ("width_multiplier", MAX_WIDTH_MULTIPLIER, "MAX_WIDTH_MULTIPLIER"),
            ("patch_size", MAX_PATCH_SIZE, "MAX_PATCH_SIZE"),
            ("image_size", MAX_IMAGE_SIZE, "MAX_IMAGE_SIZE"),
        ):
            _check_at_most(name, getattr(self, name), bound, constant)
        if self.output_stride not in VALID_OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {VALID_OUTPUT_STRIDES}, received {self.output_stride!r}")
        if self.hidden_act not in VALID_ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {VALID_ACTIVATIONS}, received {self.hidden_act!r}")
        if self.compat not in COMPAT_MODES:
            raise ValueError(f"compat must be one of {tuple(COMPAT_MODES)}, received {self.compat!r}")
        for name in _PER_STAGE_FIELDS:
            value = getattr(self, name)
            if len(value) != 3:
                raise ValueError(f"{name} must have 3 entries (stages 3, 4, 5), received {value!r} ({len(value)} entries)")
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
                raise ValueError(f"{name} must hold positive integers, received {_short(value)}")
        _check_at_most("n_attn_blocks", self.n_attn_blocks, MAX_ATTN_BLOCKS, "MAX_ATTN_BLOCKS")
        _check_at_most("base_attn_unit_dims", self.base_attn_unit_dims, MAX_ATTN_UNIT_DIM, "MAX_ATTN_UNIT_DIM")
        if len(self.atrous_rates) != 3:
            raise ValueError(f"atrous_rates must have 3 entries, received {self.atrous_rates!r}")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in self.atrous_rates):
            raise ValueError(f"atrous_rates must hold positive integers, received {_short(self.atrous_rates)}")
        _check_at_most("atrous_rates", self.atrous_rates, MAX_ATROUS_RATE, "MAX_ATROUS_RATE")
        if not isinstance(self.semantic_loss_ignore_index, int):
            raise ValueError(
                f"semantic_loss_ignore_index must be an integer, received {self.semantic_loss_ignore_index!r}"
            )

    # -------------------------------------------------------------- (de)serialize
    def to_dict(self):
        """A JSON-ready dict in Hugging Face's `config.json` layout (plus `compat`)."""
        out = {
            "model_type": self.model_type,
            "num_channels": self.num_channels,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "expand_ratio": self.expand_ratio,
            "hidden_act": self.hidden_act,
            "conv_kernel_size": self.conv_kernel_size,
            "output_stride": self.output_stride,
            "classifier_dropout_prob": self.classifier_dropout_prob,
            "initializer_range": self.initializer_range,
            "layer_norm_eps": self.layer_norm_eps,
            "aspp_out_channels": self.aspp_out_channels,
            "atrous_rates": list(self.atrous_rates),
            "aspp_dropout_prob": self.aspp_dropout_prob,
            "semantic_loss_ignore_index": self.semantic_loss_ignore_index,
            "n_attn_blocks": list(self.n_attn_blocks),
            "base_attn_unit_dims": list(self.base_attn_unit_dims),
            "width_multiplier": self.width_multiplier,
            "ffn_multiplier": self.ffn_multiplier,
            "attn_dropout": self.attn_dropout,
            "ffn_dropout": self.ffn_dropout,
            "id2label": {str(k): v for k, v in self.id2label.items()},
            "label2id": dict(self.label2id),
            "compat": self.compat,
        }
        return copy.deepcopy(out)

    # Keys of a Hugging Face config.json that carry no hyper-parameter of ours.
    _IGNORED_HF_KEYS = frozenset(
        {
            "model_type", "architectures", "transformers_version", "torch_dtype", "dtype",
            "problem_type", "return_dict", "output_hidden_states", "output_attentions",
            "torchscript", "use_bfloat16", "tie_word_embeddings", "chunk_size_feed_forward",
            "is_encoder_decoder", "is_decoder", "add_cross_attention", "pruned_heads",
            "tf_legacy_loss", "id2label_type", "finetuning_task", "_name_or_path",
        }
    )

    @classmethod
    def from_dict(cls, config_dict, **overrides):
        """Build from a dict such as a Hugging Face `config.json`; `overrides` win.

        Keys transformers writes that are not hyper-parameters (`architectures`, versions, ...) are
        ignored; any other unknown key is an error naming it.
        """
        if not isinstance(config_dict, dict):
            raise ValueError(f"config must be a dict, received {type(config_dict).__name__}")
        known = set(cls.__init__.__code__.co_varnames[1 : cls.__init__.__code__.co_argcount])
        kwargs = {}
        for key, value in {**config_dict, **overrides}.items():
            if key in known:
                kwargs[key] = value
            elif key in cls._IGNORED_HF_KEYS or key.startswith("_"):
                continue
            else:
                raise ValueError(f"unknown MobileViTV2 config field {key!r} (value {value!r})")
        model_type = config_dict.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(f"config model_type must be 'mobilevitv2', received {model_type!r}")
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path, **overrides):
        """Read a Hugging Face `config.json` (or one written by `to_json_file`)."""
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(data, **overrides)

    def to_json_string(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path):
        with open(os.fspath(path), "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    def replace(self, **changes):
        """A copy with some fields changed (validated again).

        Changing `num_labels` alone resets the label names to LABEL_0 .. LABEL_{n-1}.
        """
        fields = self.to_dict()
        if "num_labels" in changes and "id2label" not in changes:
            fields.pop("id2label")
            fields.pop("label2id")
        return type(self).from_dict(fields, **changes)

    def __eq__(self, other):
        return isinstance(other, MobileViTV2Config) and self.to_dict() == other.to_dict()

    def __repr__(self):
        fields = ", ".join(
            f"{k}={v!r}" for k, v in self.to_dict().items() if k not in ("id2label", "label2id", "model_type")
        )
        return f"MobileViTV2Config({fields}, num_labels={self.num_labels})"


# ---------------------------------------------------------------- widths, once
def make_divisible(value, divisor=8, min_value=None):
    """Round `value` to a multiple of `divisor`, never below 90% of it (MobileNet's rule)."""
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return int(new_value)


def stage_widths(config):
    """The channel widths the architecture derives from `width_multiplier`.

    Returns a dict: `stem`, `stage1` .. `stage5` (output channels), `attn3` .. `attn5` (attention
    unit widths of the MobileViTV2 blocks), as both references compute them.
    """
    w = config.width_multiplier
    attn = [make_divisible(d * w, divisor=8) for d in config.base_attn_unit_dims]
    return {
        "stem": make_divisible(min(max(32 * w, 16), 64), divisor=8, min_value=16),
        "stage1": make_divisible(64 * w, divisor=16),
        "stage2": make_divisible(128 * w, divisor=8),
        "stage3": make_divisible(256 * w, divisor=8),
        "stage4": make_divisible(384 * w, divisor=8),
        "stage5": make_divisible(512 * w, divisor=8),
        "attn3": attn[0],
        "attn4": attn[1],
        "attn5": attn[2],
    }


def stage_dilations(config):
    """Per stage 3/4/5: (stride of the downsampling block, its dilation, local conv dilation).

    At output_stride 16 stage 5 is dilated, at 8 stages 4 and 5: the downsampling block keeps
    stride 1 with the previous dilation, and (ml-cvnets only) the block's local conv takes the new
    dilation. Transformers never dilates the local conv.
    """
    dilate = {32: (False, False), 16: (False, True), 8: (True, True)}[config.output_stride]
    out = {3: (2, 1, 1)}
    dilation = 1
    for stage, dilated in zip((4, 5), dilate):
        previous = dilation
        if dilated:
            dilation *= 2
        local = dilation if config.compat == "cvnets" else 1
        out[stage] = (1 if dilated else 2, previous, local)
    return out
