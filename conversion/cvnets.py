"""Apple ml-cvnets MobileViTv2 key names -> Hugging Face (transformers) key names, as a table.

ml-cvnets (`cvnets/models/classification/mobilevit_v2.py`, `cvnets/modules/mobilevit_block.py`)
names the same modules as transformers' `MobileViTV2ForImageClassification`, in another layout:

    conv_1                                   mobilevitv2.conv_stem
    layer_1.0, layer_2.{0,1}  .block.{exp_1x1,conv_3x3,red_1x1}
                                             mobilevitv2.encoder.layer.{0,1}.layer.N.{expand_1x1,conv_3x3,reduce_1x1}
    layer_{3,4,5}.0.block.*                  mobilevitv2.encoder.layer.{2,3,4}.downsampling_layer.*
    layer_S.1.local_rep.0 / .1               ...conv_kxk / conv_1x1
    layer_S.1.global_rep.J.pre_norm_attn.0   ...transformer.layer.J.layernorm_before   (GroupNorm, 1 group)
    layer_S.1.global_rep.J.pre_norm_attn.1   ...transformer.layer.J.attention          (qkv_proj, out_proj)
    layer_S.1.global_rep.J.pre_norm_ffn.0    ...transformer.layer.J.layernorm_after
    layer_S.1.global_rep.J.pre_norm_ffn.1/.3 ...transformer.layer.J.ffn.conv1 / conv2  (.2 is Dropout)
    layer_S.1.global_rep.{n_attn_blocks}     ...layernorm     (the final norm sits after the blocks)
    layer_S.1.conv_proj                      ...conv_projection
    classifier.1                             classifier       (.0 is the global pool)

A segmentation checkpoint (`SegEncoderDecoder`) puts the backbone under `encoder.` and the DeepLabV3
head under `seg_head.` (`cvnets/models/segmentation/heads/deeplabv3.py`, `cvnets/modules/aspp_block.py`):

    seg_head.aspp.aspp_layer.convs.{0..3}              segmentation_head.aspp.convs.{0..3}
    seg_head.aspp.aspp_layer.convs.4.aspp_pool.conv_1x1  segmentation_head.aspp.convs.4.conv_1x1
    seg_head.aspp.aspp_layer.project                   segmentation_head.aspp.project
    seg_head.classifier                                segmentation_head.classifier
    seg_head.aux_head                                  (dropped: a training-only auxiliary head)

Every ml-cvnets `ConvLayer2d` stores `block.conv` and `block.norm`; transformers'
`MobileViTV2ConvLayer` stores `convolution` and `normalization`: `LEAVES` translates those.
Tensors keep their PyTorch layout; only names change. A `.pt` carries no config: it is inferred
from the tensor shapes. See `conversion/registry.py` for the source contract.
"""

import re

NAME = "cvnets"
LABEL = "ml-cvnets"  # as error messages name the naming scheme
# Detection: a key only this naming's stem has, and MobileViTV2's separable (linear) attention.
STEM_KEY = re.compile(r"(encoder\.)?conv_1\.block\.conv\.weight")
STEM_EXAMPLE = "conv_1.block.conv.weight"
ATTENTION_KEY = "pre_norm_attn.1.qkv_proj.block.conv.weight"
# ml-cvnets dilates the local conv of the dilated stages (transformers does not).
DILATES_LOCAL_CONV = True

# How the parameters inside one module are named, per kind of module.
LEAVES = {
    # ConvLayer2d with BatchNorm (no conv bias)
    "conv_bn": {
        "block.conv.weight": "convolution.weight",
        "block.norm.weight": "normalization.weight",
        "block.norm.bias": "normalization.bias",
        "block.norm.running_mean": "normalization.running_mean",
        "block.norm.running_var": "normalization.running_var",
    },
    # ConvLayer2d without norm, with bias (attention projections, FFN, segmentation classifier)
    "conv_bias": {"block.conv.weight": "convolution.weight", "block.conv.bias": "convolution.bias"},
    # ConvLayer2d without norm or bias (local_rep.1)
    "conv": {"block.conv.weight": "convolution.weight"},
    # LayerNorm2D (a GroupNorm with one group) and the Linear classifier
    "affine": {"weight": "weight", "bias": "bias"},
}

_IR_PART = {"exp_1x1": "expand_1x1", "conv_3x3": "conv_3x3", "red_1x1": "reduce_1x1"}
_ENCODER = r"(?:encoder\.)?"  # segmentation checkpoints nest the backbone under `encoder.`


def _modules():
    """(ml-cvnets module regex, Hugging Face module template, leaf kind), one row per module."""
    rows = [(_ENCODER + r"conv_1", "mobilevitv2.conv_stem", "conv_bn")]
    # Stages 1 and 2: inverted residual blocks only.
    for cv_stage, hf_stage in ((1, 0), (2, 1)):
        for part, hf_part in _IR_PART.items():
            rows.append(
                (
                    _ENCODER + rf"layer_{cv_stage}\.(?P<block>\d+)\.block\.{part}",
                    rf"mobilevitv2.encoder.layer.{hf_stage}.layer.\g<block>.{hf_part}",
                    "conv_bn",
                )
            )
    # Stages 3, 4, 5: a downsampling inverted residual (.0), then a MobileViTV2 block (.1).
    for cv_stage, hf_stage in ((3, 2), (4, 3), (5, 4)):
        cv = _ENCODER + rf"layer_{cv_stage}\."
        hf = f"mobilevitv2.encoder.layer.{hf_stage}."
        attn = cv + r"1\.global_rep\.(?P<j>\d+)\."
        hf_attn = hf + r"transformer.layer.\g<j>."
        for part, hf_part in _IR_PART.items():
            rows.append((cv + rf"0\.block\.{part}", hf + f"downsampling_layer.{hf_part}", "conv_bn"))
        rows += [
            (cv + r"1\.local_rep\.0", hf + "conv_kxk", "conv_bn"),
            (cv + r"1\.local_rep\.1", hf + "conv_1x1", "conv"),
            (attn + r"pre_norm_attn\.0", hf_attn + "layernorm_before", "affine"),
            (attn + r"pre_norm_attn\.1\.qkv_proj", hf_attn + "attention.qkv_proj", "conv_bias"),
            (attn + r"pre_norm_attn\.1\.out_proj", hf_attn + "attention.out_proj", "conv_bias"),
            (attn + r"pre_norm_ffn\.0", hf_attn + "layernorm_after", "affine"),
            (attn + r"pre_norm_ffn\.1", hf_attn + "ffn.conv1", "conv_bias"),
            (attn + r"pre_norm_ffn\.3", hf_attn + "ffn.conv2", "conv_bias"),
            # global_rep.{n_attn_blocks}: the norm after the last block holds bare weight / bias.
            (cv + r"1\.global_rep\.\d+", hf + "layernorm", "affine"),
            (cv + r"1\.conv_proj", hf + "conv_projection", "conv_bn"),
        ]
    rows.append((r"classifier\.1", "classifier", "affine"))
    # DeepLabV3 head.
    aspp = r"seg_head\.aspp\.aspp_layer\."
    rows += [
        (aspp + r"convs\.(?P<branch>[0-3])", r"segmentation_head.aspp.convs.\g<branch>", "conv_bn"),
        (aspp + r"convs\.4\.aspp_pool\.conv_1x1", "segmentation_head.aspp.convs.4.conv_1x1", "conv_bn"),
        (aspp + r"project", "segmentation_head.aspp.project", "conv_bn"),
        (r"seg_head\.classifier", "segmentation_head.classifier", "conv_bias"),
    ]
    return rows


MODULES = _modules()

# Key prefixes with no counterpart in transformers, dropped on purpose (and reported).
DROPPED = {
    "seg_head.aux_head.": "the auxiliary segmentation head (used only for the training loss)",
}
