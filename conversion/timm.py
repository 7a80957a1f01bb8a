"""timm `mobilevitv2_*` key names -> Hugging Face (transformers) key names, as a table.

timm (`timm/models/mobilevit.py`, built with `byobnet`) lays MobileViTV2 out as:

    stem.{conv,bn}                           mobilevitv2.conv_stem.{convolution,normalization}
    stages.{0,1}.N.conv{1_1x1,2_kxk,3_1x1}   mobilevitv2.encoder.layer.{0,1}.layer.N.{expand_1x1,conv_3x3,reduce_1x1}
    stages.{2,3,4}.0.conv{...}               mobilevitv2.encoder.layer.{2,3,4}.downsampling_layer.{...}
    stages.S.1.conv_kxk / conv_1x1           ...conv_kxk / conv_1x1
    stages.S.1.transformer.J.norm1 / norm2   ...transformer.layer.J.layernorm_before / layernorm_after
    stages.S.1.transformer.J.attn.{qkv_proj,out_proj}   ...transformer.layer.J.attention.{qkv_proj,out_proj}
    stages.S.1.transformer.J.mlp.{fc1,fc2}   ...transformer.layer.J.ffn.{conv1,conv2}
    stages.S.1.norm                          ...layernorm
    stages.S.1.conv_proj                     ...conv_projection
    head.fc                                  classifier

The stage numbering is the same as transformers' `encoder.layer` (0-based). timm's `conv_1x1` and the
transformer projections are bare `nn.Conv2d` (no `.conv.` level); `LEAVES` adds transformers'
`convolution.` level. Tensors keep their PyTorch layout; only names change.

A timm hub `config.json` (`architecture`, `num_classes`, `label_names`, `pretrained_cfg`) gives the
class count, the labels and the preprocessing; a bare weight file gets timm's default
`pretrained_cfg` for `mobilevitv2_*`. See `conversion/registry.py` for the source contract.
"""

import math
import re

NAME = "timm"
LABEL = "timm"  # as error messages name the naming scheme
# Detection: a key only this naming's stem has, and MobileViTV2's separable (linear) attention.
STEM_KEY = re.compile(r"stem\.conv\.weight")
STEM_EXAMPLE = "stem.conv.weight"
ATTENTION_KEY = "attn.qkv_proj.weight"
# timm dilates the local conv of the dilated stages, as ml-cvnets does (transformers does not).
DILATES_LOCAL_CONV = True

LEAVES = {
    # ConvNormAct: conv (no bias) + BatchNorm
    "conv_bn": {
        "conv.weight": "convolution.weight",
        "bn.weight": "normalization.weight",
        "bn.bias": "normalization.bias",
        "bn.running_mean": "normalization.running_mean",
        "bn.running_var": "normalization.running_var",
    },
    # bare nn.Conv2d with bias (attention projections, MLP)
    "conv_bias": {"weight": "convolution.weight", "bias": "convolution.bias"},
    # bare nn.Conv2d without bias (conv_1x1)
    "conv": {"weight": "convolution.weight"},
    # GroupNorm1 and the Linear classifier
    "affine": {"weight": "weight", "bias": "bias"},
}

_BOTTLENECK_PART = {"conv1_1x1": "expand_1x1", "conv2_kxk": "conv_3x3", "conv3_1x1": "reduce_1x1"}


def _modules():
    """(timm module regex, Hugging Face module template, leaf kind), one row per module."""
    rows = [(r"stem", "mobilevitv2.conv_stem", "conv_bn")]
    for stage in (0, 1):
        for part, hf_part in _BOTTLENECK_PART.items():
            rows.append(
                (
                    rf"stages\.{stage}\.(?P<block>\d+)\.{part}",
                    rf"mobilevitv2.encoder.layer.{stage}.layer.\g<block>.{hf_part}",
                    "conv_bn",
                )
            )
    for stage in (2, 3, 4):
        src = rf"stages\.{stage}\."
        hf = f"mobilevitv2.encoder.layer.{stage}."
        block = src + r"1\.transformer\.(?P<j>\d+)\."
        hf_block = hf + r"transformer.layer.\g<j>."
        for part, hf_part in _BOTTLENECK_PART.items():
            rows.append((src + rf"0\.{part}", hf + f"downsampling_layer.{hf_part}", "conv_bn"))
        rows += [
            (src + r"1\.conv_kxk", hf + "conv_kxk", "conv_bn"),
            (src + r"1\.conv_1x1", hf + "conv_1x1", "conv"),
            (block + r"norm1", hf_block + "layernorm_before", "affine"),
            (block + r"attn\.qkv_proj", hf_block + "attention.qkv_proj", "conv_bias"),
            (block + r"attn\.out_proj", hf_block + "attention.out_proj", "conv_bias"),
            (block + r"norm2", hf_block + "layernorm_after", "affine"),
            (block + r"mlp\.fc1", hf_block + "ffn.conv1", "conv_bias"),
            (block + r"mlp\.fc2", hf_block + "ffn.conv2", "conv_bias"),
            (src + r"1\.norm", hf + "layernorm", "affine"),
            (src + r"1\.conv_proj", hf + "conv_projection", "conv_bn"),
        ]
    rows.append((r"head\.fc", "classifier", "affine"))
    return rows


MODULES = _modules()

# Key prefixes dropped on purpose: timm MobileViTV2 has no tensor without a transformers counterpart.
DROPPED = {}


# ================================================================= config.json, preprocessing
def owns_config(config):
    """A timm hub `config.json` (`architecture`, `num_classes`, `pretrained_cfg`), not transformers'."""
    return "architecture" in config and "model_type" not in config


def read_config(config, config_path):
    """What a timm `config.json` says: class count, labels, preprocessing (the `read_source_config` dict)."""
    from conversion.sources import CheckpointError

    out = {"kind": NAME, "path": config_path, "fields": {}, "unknown": {}, "preprocessing": None, "notes": []}
    architecture = config["architecture"]
    if not isinstance(architecture, str) or not architecture.startswith("mobilevitv2"):
        raise CheckpointError(f"{config_path}: timm architecture {architecture!r} is not a mobilevitv2_* model")
    notes = [f"timm config.json: architecture {architecture}"]
    pretrained_cfg = config.get("pretrained_cfg") or {}
    if not isinstance(pretrained_cfg, dict):
        raise CheckpointError(f"{config_path}: pretrained_cfg must be a JSON object, found {type(pretrained_cfg).__name__}")
    num_classes = config.get("num_classes", pretrained_cfg.get("num_classes"))
    if num_classes is not None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
            raise CheckpointError(f"{config_path}: num_classes must be a non-negative integer, received {num_classes!r}")
        out["fields"]["num_labels"] = num_classes
        notes.append(f"num_labels {num_classes}: num_classes of the timm config")
    label_names = config.get("label_names")
    if label_names is not None:
        if not isinstance(label_names, list) or not all(isinstance(n, str) for n in label_names):
            raise CheckpointError(f"{config_path}: label_names must be a list of strings")
        descriptions = config.get("label_descriptions") or {}
        if not isinstance(descriptions, dict):
            raise CheckpointError(f"{config_path}: label_descriptions must be a JSON object of name -> description")
        names = [str(descriptions.get(n, n)) for n in label_names]
        out["fields"]["id2label"] = dict(enumerate(names))
        out["fields"].pop("num_labels", None)
        if num_classes is not None and num_classes != len(names):
            raise CheckpointError(f"{config_path}: num_classes {num_classes} but {len(names)} label_names")
        notes.append(
            f"labels: label_names of the timm config{' (with label_descriptions)' if descriptions else ''}"
        )
    processor, note = timm_preprocessing(pretrained_cfg, config_path)
    out["preprocessing"] = processor
    out["preprocessing_note"] = f"from the timm pretrained_cfg: {note}" if processor else note
    out["notes"] = notes
    return out


# timm's `pretrained_cfg` of every `mobilevitv2_*` (timm/models/mobilevit.py `_cfg(crop_pct=0.888)`),
# what a bare timm weight file without its config.json is assumed to need.
TIMM_DEFAULT_PRETRAINED_CFG = {
    "input_size": [3, 256, 256],
    "interpolation": "bicubic",
    "crop_pct": 0.888,
    "crop_mode": "center",
    "mean": [0.0, 0.0, 0.0],
    "std": [1.0, 1.0, 1.0],
}


def timm_preprocessing(pretrained_cfg, origin):
    """(transformers `preprocessor_config.json` dict or None, note) for a timm `pretrained_cfg`.

    timm's eval transform: resize the shorter side to `floor(size / crop_pct)` with
    `interpolation`, centre crop `input_size`, scale to [0, 1], normalise by `mean` / `std`, RGB.
    """
    from conversion.sources import CheckpointError

    try:
        _, height, width = (int(v) for v in pretrained_cfg.get("input_size", TIMM_DEFAULT_PRETRAINED_CFG["input_size"]))
        crop_pct = float(pretrained_cfg.get("crop_pct", TIMM_DEFAULT_PRETRAINED_CFG["crop_pct"]))
        interpolation = str(pretrained_cfg.get("interpolation", TIMM_DEFAULT_PRETRAINED_CFG["interpolation"]))
        mean = [float(v) for v in pretrained_cfg.get("mean", TIMM_DEFAULT_PRETRAINED_CFG["mean"])]
        std = [float(v) for v in pretrained_cfg.get("std", TIMM_DEFAULT_PRETRAINED_CFG["std"])]
        crop_mode = pretrained_cfg.get("crop_mode", "center")
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{origin}: invalid timm pretrained_cfg ({e})") from None
    if not 0 < crop_pct <= 1:
        raise CheckpointError(f"{origin}: pretrained_cfg.crop_pct must be in (0, 1], received {crop_pct}")
    if crop_mode != "center":
        return None, f"{origin}: pretrained_cfg crop_mode {crop_mode!r} is not supported; no preprocessing attached"
    if any(m != 0.0 for m in mean) or any(v != 1.0 for v in std):
        return None, (
            f"{origin}: pretrained_cfg normalises by mean {mean} / std {std}, which this package's preprocessing "
            "(rescale only) cannot express; no preprocessing attached, normalise the pixels yourself"
        )
    if interpolation not in ("bilinear", "bicubic", "nearest"):
        return None, f"{origin}: pretrained_cfg interpolation {interpolation!r} is not supported; no preprocessing attached"
    shortest = int(math.floor(min(height, width) / crop_pct))
    processor = {
        "size": {"shortest_edge": shortest},
        "crop_size": {"height": height, "width": width},
        "do_center_crop": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_flip_channel_order": False,  # timm feeds RGB
        "resample": interpolation,
    }
    note = (
        f"input {height}x{width}, crop_pct {crop_pct} -> shortest edge {shortest}, {interpolation}, "
        f"mean {mean} / std {std} (rescale 1/255 only), RGB"
    )
    return processor, note


def default_preprocessing():
    """(processor, note) for a timm file that carries no config.json: timm's default pretrained_cfg."""
    processor, note = timm_preprocessing(TIMM_DEFAULT_PRETRAINED_CFG, "timm mobilevitv2 default")
    return processor, f"preprocessing assumed (the file carries none): timm's default pretrained_cfg for mobilevitv2_*: {note}"
