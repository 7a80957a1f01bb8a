"""A test-side ml-cvnets checkpoint builder, written from the ml-cvnets sources (not from conversion/cvnets.py).

`cvnets_state_dict(hf_model, config, task)` renames a transformers MobileViTV2 state dict into the
key names Apple's ml-cvnets gives the same modules, in ml-cvnets' registration order, so a test can
save a checkpoint "written by ml-cvnets" for any config without ml-cvnets installed. The module tree
below is transcribed from ml-cvnets (commit 0c0f798, the names each `__init__` registers):

cvnets/models/classification/mobilevit_v2.py `MobileViTv2`:
    conv_1                ConvLayer2d(3x3, stride 2, norm, act)
    layer_1, layer_2      _make_mobilenet_layer: nn.Sequential of InvertedResidual (1 and 2 blocks)
    layer_3, layer_4, layer_5   _make_mit_layer: nn.Sequential(InvertedResidual (stride 2), MobileViTBlockv2)
    conv_1x1_exp          Identity (no tensors)
    classifier            nn.Sequential(GlobalPool, LinearLayer): `classifier.1.weight` / `.bias`
cvnets/modules/mobilenetv2.py `InvertedResidual`: self.block = Sequential(exp_1x1, conv_3x3, red_1x1),
    each a ConvLayer2d with norm (exp_1x1 only when expand_ratio != 1; MobileViTV2 uses 2).
cvnets/modules/mobilevit_block.py `MobileViTBlockv2`:
    local_rep = Sequential(ConvLayer2d depthwise kxk with norm + act, ConvLayer2d 1x1 no norm, no bias)
    global_rep = Sequential(LinearAttnFFN x n_attn_blocks, norm layer)   (`_build_attn_layer`)
    conv_proj = ConvLayer2d(1x1, norm, no act)
cvnets/modules/transformer.py `LinearAttnFFN`:
    pre_norm_attn = Sequential(norm, LinearSelfAttention, Dropout)
    pre_norm_ffn = Sequential(norm, ConvLayer2d(bias, act), Dropout, ConvLayer2d(bias), Dropout)
cvnets/layers/linear_attention.py `LinearSelfAttention`: qkv_proj, out_proj (ConvLayer2d, bias, no norm)
cvnets/layers/conv_layer.py `ConvLayer2d`: self.block = Sequential(conv [, norm] [, act])
    -> `block.conv.weight` (+ `.bias`), `block.norm.{weight,bias,running_mean,running_var,num_batches_tracked}`
cvnets/layers/normalization/layer_norm.py `LayerNorm2D_NCHW` ("layer_norm_2d"): a GroupNorm(1 group):
    `weight`, `bias` directly on the Sequential index.
cvnets/models/segmentation/enc_dec.py `SegEncoderDecoder`: `encoder.` (classifier set to None) then
    `seg_head.`; heads/base_seg_head.py registers `aux_head` (when use_aux_head) before
    heads/deeplabv3.py's `aspp` (Sequential with `aspp_layer`) and `classifier` (ConvLayer2d, bias).
    aux_head = Sequential(ConvLayer2d 3x3 norm act (l4 -> max(l4 // 4, 128)), Dropout2d, ConvLayer2d 1x1 bias).
cvnets/modules/aspp_block.py `ASPP`: convs = ModuleList(in_proj, ASPPConv2d x 3, ASPPPooling), project;
    ASPPConv2d is a ConvLayer2d; ASPPPooling.aspp_pool = Sequential(global_pool, conv_1x1).

Transformers' side (`transformers.models.mobilevitv2.modeling_mobilevitv2`): `MobileViTV2ConvLayer`
holds `convolution` / `normalization`; the stages are `mobilevitv2.encoder.layer.{0..4}`; stages 3..5
hold `downsampling_layer`, `conv_kxk`, `conv_1x1`, `transformer.layer.J.{layernorm_before, attention,
layernorm_after, ffn.conv1, ffn.conv2}`, `layernorm`, `conv_projection`.
"""

from collections import OrderedDict

# What a module of each kind stores: (ml-cvnets leaf, transformers leaf).
LEAVES = {
    "conv_norm": [
        ("block.conv.weight", "convolution.weight"),
        ("block.norm.weight", "normalization.weight"),
        ("block.norm.bias", "normalization.bias"),
        ("block.norm.running_mean", "normalization.running_mean"),
        ("block.norm.running_var", "normalization.running_var"),
        ("block.norm.num_batches_tracked", "normalization.num_batches_tracked"),
    ],
    "conv": [("block.conv.weight", "convolution.weight")],
    "conv_bias": [("block.conv.weight", "convolution.weight"), ("block.conv.bias", "convolution.bias")],
    "affine": [("weight", "weight"), ("bias", "bias")],
}


def _inverted_residual(cv, hf):
    return [(f"{cv}.block.{cv_part}", f"{hf}.{hf_part}", "conv_norm") for cv_part, hf_part in (
        ("exp_1x1", "expand_1x1"), ("conv_3x3", "conv_3x3"), ("red_1x1", "reduce_1x1"),
    )]


def encoder_modules(n_attn_blocks, cv_prefix="", hf_prefix="mobilevitv2."):
    """(ml-cvnets module, transformers module, kind) of the MobileViTv2 encoder, in ml-cvnets order."""
    rows = [(f"{cv_prefix}conv_1", f"{hf_prefix}conv_stem", "conv_norm")]
    rows += _inverted_residual(f"{cv_prefix}layer_1.0", f"{hf_prefix}encoder.layer.0.layer.0")
    for block in (0, 1):
        rows += _inverted_residual(f"{cv_prefix}layer_2.{block}", f"{hf_prefix}encoder.layer.1.layer.{block}")
    for cv_stage, n_blocks in zip((3, 4, 5), n_attn_blocks):
        cv = f"{cv_prefix}layer_{cv_stage}"
        hf = f"{hf_prefix}encoder.layer.{cv_stage - 1}"
        rows += _inverted_residual(f"{cv}.0", f"{hf}.downsampling_layer")
        rows += [(f"{cv}.1.local_rep.0", f"{hf}.conv_kxk", "conv_norm"), (f"{cv}.1.local_rep.1", f"{hf}.conv_1x1", "conv")]
        for j in range(n_blocks):
            g, t = f"{cv}.1.global_rep.{j}", f"{hf}.transformer.layer.{j}"
            rows += [
                (f"{g}.pre_norm_attn.0", f"{t}.layernorm_before", "affine"),
                (f"{g}.pre_norm_attn.1.qkv_proj", f"{t}.attention.qkv_proj", "conv_bias"),
                (f"{g}.pre_norm_attn.1.out_proj", f"{t}.attention.out_proj", "conv_bias"),
                (f"{g}.pre_norm_ffn.0", f"{t}.layernorm_after", "affine"),
                (f"{g}.pre_norm_ffn.1", f"{t}.ffn.conv1", "conv_bias"),
                (f"{g}.pre_norm_ffn.3", f"{t}.ffn.conv2", "conv_bias"),
            ]
        rows += [(f"{cv}.1.global_rep.{n_blocks}", f"{hf}.layernorm", "affine")]
        rows += [(f"{cv}.1.conv_proj", f"{hf}.conv_projection", "conv_norm")]
    return rows


def deeplabv3_modules():
    """(ml-cvnets module, transformers module, kind) of the DeepLabV3 head (after any aux_head)."""
    aspp, hf = "seg_head.aspp.aspp_layer", "segmentation_head"
    rows = [(f"{aspp}.convs.{i}", f"{hf}.aspp.convs.{i}", "conv_norm") for i in range(4)]
    rows += [
        (f"{aspp}.convs.4.aspp_pool.conv_1x1", f"{hf}.aspp.convs.4.conv_1x1", "conv_norm"),
        (f"{aspp}.project", f"{hf}.aspp.project", "conv_norm"),
        ("seg_head.classifier", f"{hf}.classifier", "conv_bias"),
    ]
    return rows


def _aux_head(l4_channels, num_labels, seed):
    """ml-cvnets' training-only auxiliary head on the stage-4 output: random tensors (no HF counterpart)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    inner = max(l4_channels // 4, 128)
    out = OrderedDict()
    out["seg_head.aux_head.0.block.conv.weight"] = torch.randn(inner, l4_channels, 3, 3, generator=gen) * 0.02
    out["seg_head.aux_head.0.block.norm.weight"] = 1 + 0.1 * torch.randn(inner, generator=gen)
    out["seg_head.aux_head.0.block.norm.bias"] = 0.1 * torch.randn(inner, generator=gen)
    out["seg_head.aux_head.0.block.norm.running_mean"] = 0.1 * torch.randn(inner, generator=gen)
    out["seg_head.aux_head.0.block.norm.running_var"] = torch.rand(inner, generator=gen) + 0.5
    out["seg_head.aux_head.0.block.norm.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    out["seg_head.aux_head.2.block.conv.weight"] = torch.randn(num_labels, inner, 1, 1, generator=gen) * 0.1
    out["seg_head.aux_head.2.block.conv.bias"] = 0.1 * torch.randn(num_labels, generator=gen)
    return out


def cvnets_state_dict(hf_model, aux_head=False, seed=0):
    """The state dict of `hf_model` (a transformers MobileViTV2 model) under ml-cvnets' names.

    Classification -> `MobileViTv2` names; semantic segmentation -> `SegEncoderDecoder` (encoder +
    DeepLabV3, with ml-cvnets' auxiliary head when `aux_head`); a bare `MobileViTV2Model` ->
    `MobileViTv2` without classifier. Tensors are the model's own (cloned), strictly: every
    transformers tensor is used exactly once.
    """
    hf_state = hf_model.state_dict()
    config = hf_model.config
    kind = type(hf_model).__name__
    if kind == "MobileViTV2ForImageClassification":
        rows = encoder_modules(config.n_attn_blocks) + [("classifier.1", "classifier", "affine")]
    elif kind == "MobileViTV2ForSemanticSegmentation":
        rows = encoder_modules(config.n_attn_blocks, cv_prefix="encoder.")
    elif kind == "MobileViTV2Model":
        rows = encoder_modules(config.n_attn_blocks, hf_prefix="")
    else:
        raise ValueError(f"not a transformers MobileViTV2 model: {kind}")

    out = OrderedDict()
    used = set()

    def take(module_rows):
        for cv_module, hf_module, leaf_kind in module_rows:
            for cv_leaf, hf_leaf in LEAVES[leaf_kind]:
                hf_key = f"{hf_module}.{hf_leaf}"
                out[f"{cv_module}.{cv_leaf}"] = hf_state[hf_key].detach().clone()
                used.add(hf_key)

    take(rows)
    if kind == "MobileViTV2ForSemanticSegmentation":
        if aux_head:
            l4 = hf_state["mobilevitv2.encoder.layer.3.conv_projection.convolution.weight"].shape[0]
            out.update(_aux_head(l4, config.num_labels, seed))
        take(deeplabv3_modules())
    unused = sorted(set(hf_state) - used)
    if unused:
        raise AssertionError(f"transformers tensors without an ml-cvnets name: {unused[:8]}")
    return out

