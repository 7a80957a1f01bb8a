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
"""

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
