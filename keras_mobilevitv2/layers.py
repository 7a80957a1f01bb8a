"""The MobileViTV2 building blocks, channels-last, written once with `keras.ops`, on every backend.

Layer names mirror the module names of Hugging Face's `modeling_mobilevitv2.py` with "." spelled
"_" (Keras' torch backend refuses "." in names): `convolution`, `normalization`, `conv_kxk`,
`transformer_layer_0`, `layernorm_before`, `qkv_proj`, ...; `conversion/hf.py` maps a variable path
such as `encoder_layer_2/conv_kxk/convolution/depthwise_kernel` back to the PyTorch tensor
`encoder.layer.2.conv_kxk.convolution.weight`.

Every layer calls its Keras sub-layers (`Conv2D`, `DepthwiseConv2D`, `BatchNormalization`,
`GroupNormalization`, `Dense`). The few TensorFlow fast paths (a native dilated conv, `BiasAdd`
that grappler fuses, one `FusedBatchNormV3` op in training) live in `keras_mobilevitv2.backend_ops`,
each with its `keras.ops` fallback, reached through the small sub-layer classes below.

Inference form. As timm's `fuse()` / `reparameterize()`, a layer told to `fuse()` replaces its
sub-layers by the faster ones computing the same function in inference: a `ConvBN` folds its
BatchNorm into the conv (a stride-2 depthwise conv becomes a (k+1) x (k+1) conv with "same"
padding that reads PyTorch's windows without a padded copy), a `TransformerLayer` folds the affine
of its two GroupNorms into the 1x1 convs that follow them (the norms keep only their statistics, as
Keras' `GroupNormalization(center=False, scale=False)` says: "when the next layer is linear ... the
scaling will be done by the next layer"), and `LinearSelfAttention` splits its qkv projection so the
keys are never formed per patch (the key bias is added once: the scores sum to one). The same
structure is built directly with `fused=True` (so a fused model saves and loads);
`keras_mobilevitv2.fusion` walks a model and fuses every layer. Training runs the unfused form.

Inside a MobileViTV2 block the patches are laid out as (B, N, P, C): N = number of patches
(row-major over the patch grid), P = pixels in a patch, C = channels. The references use
(B, C, P, N); every operation of the block is either pointwise in (N, P), a reduction over N
(the separable attention) or a reduction over all of (N, P, C) (the GroupNorm "layer norm"), so
the order of the axes does not change a single number, and (B, N, P, C) needs one rank-4
transpose to unfold and one to fold.
"""

import contextlib

import keras
import numpy as np
from keras import ops

from keras_mobilevitv2 import backend_ops
from keras_mobilevitv2.config import make_divisible

# PyTorch conventions, translated once.
BN_EPSILON = 1e-5  # torch.nn.BatchNorm2d default eps
BN_MOMENTUM = 0.9  # torch momentum 0.1 == Keras momentum 0.9
GN_EPSILON = 1e-5  # torch.nn.GroupNorm default eps


def silu(x):
    """x * sigmoid(x), written out: grappler fuses it into a preceding conv + bias (it does not see
    through `tf.nn.silu`'s custom gradient), and eagerly it is two passes where `tf.nn.silu` makes
    three (it multiplies by beta = 1 first). Training through it is faster too (benchmarks/RESULTS.md)."""
    return x * ops.sigmoid(x)


ACTIVATIONS = {
    "swish": silu,
    "silu": silu,
    "relu": keras.activations.relu,
    "gelu": lambda x: keras.activations.gelu(x, approximate=False),
    "relu6": keras.activations.relu6,
    "hard_swish": keras.activations.hard_silu,
    "tanh": keras.activations.tanh,
    "sigmoid": keras.activations.sigmoid,
}

COMPAT_MODES = ("cvnets", "transformers")


def _check_positive_int(layer, name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{layer}: `{name}` must be a positive integer, received {value!r}")


def _check_activation(layer, value):
    if value is not None and value not in ACTIVATIONS:
        raise ValueError(f"{layer}: `activation` must be None or one of {sorted(ACTIVATIONS)}, received {value!r}")


def _check_probability(layer, name, value):
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{layer}: `{name}` must be in [0, 1), received {value!r}")


def _check_epsilon(layer, name, value):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{layer}: `{name}` must be a positive number, received {value!r}")


def _numpy(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float64)


@contextlib.contextmanager
def _state_unlocked(layer):
    """Keras locks a built layer's state; fusing a layer in place replaces sub-layers."""
    tracker = layer._tracker
    locked = tracker.locked
    tracker.unlock()
    try:
        yield
    finally:
        if locked:
            tracker.lock()


def _replace(parent, attribute, layer, input_shape, weights=()):
    """Swap the sub-layer `parent.<attribute>` for `layer` (or None), built on `input_shape`, weights set."""
    old = getattr(parent, attribute, None)
    with _state_unlocked(parent):
        if old is not None and layer is not None:
            parent._tracker.replace_tracked_value("layers", old, layer)  # same place in the layer order
        elif old is not None:
            parent._tracker.untrack(old)
        setattr(parent, attribute, layer)
    if layer is None:
        return
    layer.build(input_shape)
    for variable, value in zip(layer.weights, weights, strict=True):
        variable.assign(np.asarray(value).astype(variable.dtype))


# ---------------------------------------------------------- Keras sub-layers with fast paths
@keras.saving.register_keras_serializable(package="keras_mobilevitv2")
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` whose conv and bias add take `backend_ops`' fast paths."""

    def convolution_op(self, inputs, kernel):
        return backend_ops.conv2d(inputs, kernel, list(self.strides), self.padding, list(self.dilation_rate))

    def call(self, inputs):
        x = self.convolution_op(inputs, self.kernel)
        if self.use_bias:
            x = backend_ops.bias_add(x, self.bias)
        return x if self.activation is None else self.activation(x)


@keras.saving.register_keras_serializable(package="keras_mobilevitv2")
class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` whose bias add is `backend_ops.bias_add` (fused by grappler)."""

    def call(self, inputs):
        x = ops.depthwise_conv(inputs, self.kernel, self.strides, self.padding, dilation_rate=self.dilation_rate)
        if self.use_bias:
            x = backend_ops.bias_add(x, self.bias)
        return x if self.activation is None else self.activation(x)


@keras.saving.register_keras_serializable(package="keras_mobilevitv2")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` (channels-last) whose training step is
    `backend_ops.batch_moments_and_normalize` (one fused op on TensorFlow): the same arithmetic,
    statistics in float32, the moving variance averaging the biased batch variance."""

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None or self.renorm or not (self.center and self.scale):
            return super().call(inputs, training=training, mask=mask)
        y, mean, variance = backend_ops.batch_moments_and_normalize(inputs, self.gamma, self.beta, self.epsilon)
        momentum = self.momentum
        self.moving_mean.assign(
            self.moving_mean * momentum + ops.cast(mean, self.moving_mean.dtype) * (1.0 - momentum)
        )
        self.moving_variance.assign(
            self.moving_variance * momentum + ops.cast(variance, self.moving_variance.dtype) * (1.0 - momentum)
        )
        return ops.cast(y, self.compute_dtype)


def layer_norm(epsilon=GN_EPSILON, affine=True, dtype=None, name=None):
    """MobileViTV2's "layer norm": `nn.GroupNorm(1, C)` in PyTorch (`LayerNorm2D` in ml-cvnets),
    statistics over all of (H, W, C) or (N, P, C), then a per-channel affine; Keras'
    `GroupNormalization(groups=1)`, which computes in float32 under mixed precision.
    `affine=False` when the next layer takes the affine over (`TransformerLayer.fuse`)."""
    return keras.layers.GroupNormalization(
        groups=1, axis=-1, epsilon=epsilon, center=affine, scale=affine, dtype=dtype, name=name
    )


# --------------------------------------------------------------------------- ConvBN
class ConvBN(keras.layers.Layer):
    """Conv (or depthwise conv) -> optional BatchNorm -> optional activation.

    The Keras twin of transformers' `MobileViTV2ConvLayer` / ml-cvnets' `ConvLayer2d`: PyTorch pads
    `(k - 1) // 2 * dilation` on every side. For stride 1 that is Keras' `"same"`; for stride 2
    `"same"` would pad only bottom/right, so the input is padded explicitly and the conv is "valid".

    Fused (`fuse()`, or built with `fused=True`): one conv with a bias, the BatchNorm folded in
    (conv then BatchNorm(moving statistics) is one conv with kernel * s and bias
    beta + (bias - moving_mean) * s, s = gamma / sqrt(moving_variance + eps)). A stride-2 depthwise
    conv then has a (k+1) x (k+1) kernel, a zero row and column appended, padded "same": it reads
    exactly PyTorch's windows (for even and odd sizes) without a padded copy of the input (oneDNN
    fuses no pad into a depthwise conv; grappler does for a regular conv).

    Args:
        filters: output channels (ignored for `depthwise=True`, which keeps the channel count).
        kernel_size: odd kernel size.
        strides: 1 or 2.
        dilation_rate: dilation of the kernel.
        depthwise: a depthwise conv (groups == channels in PyTorch).
        use_bias: conv bias.
        use_normalization: a BatchNorm after the conv.
        activation: None or the name of an activation in `ACTIVATIONS`.
        fused: build the inference form (see above).
    """

    def __init__(
        self,
        filters=None,
        kernel_size=1,
        strides=1,
        dilation_rate=1,
        depthwise=False,
        use_bias=False,
        use_normalization=True,
        activation=None,
        fused=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not depthwise:
            _check_positive_int(self.name, "filters", filters)
        _check_positive_int(self.name, "kernel_size", kernel_size)
        if kernel_size % 2 != 1:
            raise ValueError(f"{self.name}: `kernel_size` must be odd, received {kernel_size}")
        if strides not in (1, 2):
            raise ValueError(f"{self.name}: `strides` must be 1 or 2, received {strides!r}")
        _check_positive_int(self.name, "dilation_rate", dilation_rate)
        if strides > 1 and dilation_rate > 1:
            raise ValueError(f"{self.name}: strides {strides} with dilation_rate {dilation_rate} is not supported")
        _check_activation(self.name, activation)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.dilation_rate = dilation_rate
        self.depthwise = depthwise
        self.use_bias = use_bias
        self.use_normalization = use_normalization
        self.activation = activation
        self.fused = bool(fused)
        self.padding = (kernel_size - 1) // 2 * dilation_rate if strides > 1 else 0  # explicit, each side
        self.convolution = self._make_convolution(self.fused)
        self.normalization = None
        if use_normalization and not self.fused:
            self.normalization = BatchNormalization(
                epsilon=BN_EPSILON, momentum=BN_MOMENTUM, dtype=self.dtype_policy, name="normalization"
            )
        self._activation_fn = ACTIVATIONS[activation] if activation else None

    def _pads_input(self, fused):
        """Whether the input gets an explicit pad: stride 2, but not a fused depthwise conv."""
        return self.strides > 1 and not (fused and self.depthwise)

    def _make_convolution(self, fused):
        wider = fused and self.depthwise and self.strides > 1  # the (k+1) x (k+1) kernel
        common = dict(
            kernel_size=self.kernel_size + 1 if wider else self.kernel_size,
            strides=self.strides,
            dilation_rate=self.dilation_rate,
            padding="valid" if self._pads_input(fused) else "same",
            use_bias=self.use_bias or (fused and self.use_normalization),
            dtype=self.dtype_policy,
            name="convolution",
        )
        if self.depthwise:
            return DepthwiseConv2D(**common)
        return Conv2D(self.filters, **common)

    def _padded_shape(self, input_shape):
        if not self._pads_input(self.fused):
            return tuple(input_shape)
        b, h, w, c = input_shape
        p = self.padding
        return (b, None if h is None else h + 2 * p, None if w is None else w + 2 * p, c)

    def build(self, input_shape):
        shape = self._padded_shape(input_shape)
        self.convolution.build(shape)
        if self.normalization is not None:
            self.normalization.build(self.convolution.compute_output_shape(shape))

    def call(self, inputs, training=None):
        x = inputs
        if self._pads_input(self.fused):
            p = self.padding
            x = ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])  # (B, H, W, C) -> (B, H+2p, W+2p, C)
        x = self.convolution(x)
        if self.normalization is not None:
            x = self.normalization(x, training=training)
        if self._activation_fn is not None:
            x = self._activation_fn(x)
        return x

    def folded_weights(self):
        """(kernel, bias or None) as float64 numpy: the conv with its inference BatchNorm folded in,
        in the layout of the unfused conv."""
        if self.fused:
            raise ValueError(f"{self.name}: already fused")
        conv, bn = self.convolution, self.normalization
        kernel = _numpy(conv.kernel)
        bias = _numpy(conv.bias) if self.use_bias else None
        if bn is None:
            return kernel, bias
        scale = _numpy(bn.gamma) / np.sqrt(_numpy(bn.moving_variance) + bn.epsilon)  # (C_out,)
        shift = _numpy(bn.beta) + ((bias if bias is not None else 0.0) - _numpy(bn.moving_mean)) * scale
        if self.depthwise:
            return kernel * scale[None, None, :, None], shift  # (kh, kw, C, 1)
        return kernel * scale, shift  # (kh, kw, C_in, C_out)

    def fuse(self):
        """Turn this layer into its inference form in place (see the class docstring)."""
        if self.fused:
            return
        if not self.built:
            raise ValueError(f"{self.name}: build the layer before fusing it")
        kernel, bias = self.folded_weights()
        input_shape = (None, None, None, self.convolution.kernel.shape[2])
        self.fused = True
        if self.depthwise and self.strides > 1:
            kernel = np.pad(kernel, [[0, 1], [0, 1], [0, 0], [0, 0]])  # (k+1, k+1, C, 1)
        weights = [kernel] if bias is None else [kernel, bias]
        _replace(self, "normalization", None, None)
        _replace(self, "convolution", self._make_convolution(True), input_shape, weights)

    def fold_input_affine(self, scale, shift):
        """Take a per-input-channel affine `x * scale + shift` in front of this 1x1 conv into its
        weights: conv(x * scale + shift) = conv_{kernel * scale}(x) + shift @ kernel."""
        if self.depthwise or self.kernel_size != 1 or self.normalization is not None or not self.convolution.use_bias:
            raise ValueError(f"{self.name}: an input affine folds only into a 1x1 conv with a bias and no BatchNorm")
        conv = self.convolution
        kernel, bias = _numpy(conv.kernel), _numpy(conv.bias)  # (1, 1, C_in, C_out), (C_out,)
        conv.bias.assign((bias + shift @ kernel[0, 0]).astype(conv.bias.dtype))
        conv.kernel.assign((kernel * scale[None, None, :, None]).astype(conv.kernel.dtype))

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        out_c = c if self.depthwise else self.filters
        pad = (self.kernel_size - 1) // 2 * self.dilation_rate

        def size(n):
            if n is None:
                return None
            return (n + 2 * pad - self.dilation_rate * (self.kernel_size - 1) - 1) // self.strides + 1

        return (b, size(h), size(w), out_c)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            dilation_rate=self.dilation_rate,
            depthwise=self.depthwise,
            use_bias=self.use_bias,
            use_normalization=self.use_normalization,
            activation=self.activation,
            fused=self.fused,
        )
        return config


def _fuse_all(layer, children):
    for child in children:
        if child is not None:
            child.fuse()
    layer.fused = True


# ------------------------------------------------------------- InvertedResidual
class InvertedResidual(keras.layers.Layer):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise (stride, dilation) -> 1x1 reduce, + residual.

    Hidden width `make_divisible(round(in_channels * expand_ratio), 8)`; the residual is used when the
    stride is 1 and the channel count is unchanged.
    """

    def __init__(
        self, out_channels, strides=1, dilation_rate=1, expand_ratio=2.0, activation="swish", fused=False, **kwargs
    ):
        super().__init__(**kwargs)
        _check_positive_int(self.name, "out_channels", out_channels)
        if strides not in (1, 2):
            raise ValueError(f"{self.name}: `strides` must be 1 or 2, received {strides!r}")
        _check_positive_int(self.name, "dilation_rate", dilation_rate)
        if not isinstance(expand_ratio, (int, float)) or not expand_ratio > 0:
            raise ValueError(f"{self.name}: `expand_ratio` must be positive, received {expand_ratio!r}")
        _check_activation(self.name, activation)
        self.out_channels = out_channels
        self.strides = strides
        self.dilation_rate = dilation_rate
        self.expand_ratio = expand_ratio
        self.activation = activation
        self.fused = bool(fused)

    def build(self, input_shape):
        in_channels = input_shape[-1]
        hidden = make_divisible(int(round(in_channels * self.expand_ratio)), 8)
        self.use_residual = self.strides == 1 and in_channels == self.out_channels
        common = dict(activation=self.activation, fused=self.fused, dtype=self.dtype_policy)
        self.expand_1x1 = ConvBN(hidden, 1, name="expand_1x1", **common)
        self.conv_3x3 = ConvBN(
            kernel_size=3, strides=self.strides, dilation_rate=self.dilation_rate, depthwise=True, name="conv_3x3", **common
        )
        self.reduce_1x1 = ConvBN(self.out_channels, 1, fused=self.fused, dtype=self.dtype_policy, name="reduce_1x1")
        self.expand_1x1.build(input_shape)
        shape = self.expand_1x1.compute_output_shape(input_shape)
        self.conv_3x3.build(shape)
        self.reduce_1x1.build(self.conv_3x3.compute_output_shape(shape))

    def call(self, inputs, training=None):
        x = self.expand_1x1(inputs, training=training)
        x = self.conv_3x3(x, training=training)
        x = self.reduce_1x1(x, training=training)
        return inputs + x if self.use_residual else x

    def fuse(self):
        _fuse_all(self, (self.expand_1x1, self.conv_3x3, self.reduce_1x1))

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        if self.strides == 2:
            h = None if h is None else (h - 1) // 2 + 1
            w = None if w is None else (w - 1) // 2 + 1
        return (b, h, w, self.out_channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            out_channels=self.out_channels,
            strides=self.strides,
            dilation_rate=self.dilation_rate,
            expand_ratio=self.expand_ratio,
            activation=self.activation,
            fused=self.fused,
        )
        return config


class MobileNetStage(keras.layers.Layer):
    """`num_blocks` InvertedResiduals (stages 1 and 2); only the first one strides."""

    def __init__(self, out_channels, num_blocks=1, strides=1, expand_ratio=2.0, activation="swish", fused=False, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int(self.name, "out_channels", out_channels)
        _check_positive_int(self.name, "num_blocks", num_blocks)
        self.out_channels = out_channels
        self.num_blocks = num_blocks
        self.strides = strides
        self.expand_ratio = expand_ratio
        self.activation = activation
        self.fused = bool(fused)
        self.blocks = [
            InvertedResidual(
                out_channels,
                strides=strides if i == 0 else 1,
                expand_ratio=expand_ratio,
                activation=activation,
                fused=self.fused,
                dtype=self.dtype_policy,
                name=f"layer_{i}",
            )
            for i in range(num_blocks)
        ]

    def build(self, input_shape):
        shape = input_shape
        for block in self.blocks:
            block.build(shape)
            shape = block.compute_output_shape(shape)

    def call(self, inputs, training=None):
        x = inputs
        for block in self.blocks:
            x = block(x, training=training)
        return x

    def fuse(self):
        _fuse_all(self, self.blocks)

    def compute_output_shape(self, input_shape):
        shape = input_shape
        for block in self.blocks:
            shape = block.compute_output_shape(shape)
        return shape

    def get_config(self):
        config = super().get_config()
        config.update(
            out_channels=self.out_channels,
            num_blocks=self.num_blocks,
            strides=self.strides,
            expand_ratio=self.expand_ratio,
            activation=self.activation,
            fused=self.fused,
        )
        return config


# ---------------------------------------------------------- separable attention
class LinearSelfAttention(keras.layers.Layer):
    """Separable self-attention of MobileViTV2, on patches laid out (B, N, P, C).

    A 1x1 projection (`qkv_proj`) gives one query channel, C key and C value channels; the query is
    softmax-normalised over the N patches (in float32), the keys are summed over N with those
    scores into one context vector per pixel-in-patch, which gates ReLU(values); a 1x1 output
    projection follows. Cost is linear in N.

    Fused: `query_proj`, `key_proj` and `value_proj` hold the slices of `qkv_proj` (and an input
    affine folded in, see `fuse`). The keys are then never formed per patch: with
    k_n = x_n W_k + b_k and sum_n s_n = 1, sum_n s_n k_n = (sum_n s_n x_n) W_k + b_k, so the key
    projection runs once per pixel-in-patch on the score-weighted input (a third of the
    projection's multiply-adds saved). Attention dropout is an identity there (inference).
    """

    def __init__(self, embed_dim, attn_dropout=0.0, fused=False, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int(self.name, "embed_dim", embed_dim)
        _check_probability(self.name, "attn_dropout", attn_dropout)
        self.embed_dim = embed_dim
        self.attn_dropout = attn_dropout
        self.fused = bool(fused)
        if not self.fused:
            self.qkv_proj = self._projection(1 + 2 * embed_dim, "qkv_proj")
        self.out_proj = self._projection(embed_dim, "out_proj")
        self.dropout = keras.layers.Dropout(attn_dropout, autocast=False, dtype=self.dtype_policy, name="attn_dropout")
        if self.fused:  # after out_proj, where `fuse` puts them: one weight order either way
            self._make_split_projections()

    def _projection(self, filters, name):
        return ConvBN(filters, 1, use_bias=True, use_normalization=False, dtype=self.dtype_policy, name=name)

    def _make_split_projections(self):
        self.query_proj = self._projection(1, "query_proj")
        self.key_proj = keras.layers.Dense(self.embed_dim, dtype=self.dtype_policy, name="key_proj")
        self.value_proj = self._projection(self.embed_dim, "value_proj")

    def build(self, input_shape):
        if self.fused:
            self.query_proj.build(input_shape)
            self.key_proj.build((None, None, input_shape[-1]))
            self.value_proj.build(input_shape)
        else:
            self.qkv_proj.build(input_shape)
        self.out_proj.build(tuple(input_shape[:-1]) + (self.embed_dim,))

    def call(self, inputs, training=None):
        e = self.embed_dim
        if self.fused:
            query = self.query_proj(inputs)  # (B, N, P, 1)
            scores = backend_ops.softmax(ops.cast(query, "float32"), axis=1)  # over the N patches
            pooled = ops.sum(inputs * ops.cast(scores, inputs.dtype), axis=1)  # (B, N, P, C) -> (B, P, C)
            context = ops.expand_dims(self.key_proj(pooled), 1)  # (B, 1, P, C)
            value = ops.relu(self.value_proj(inputs))  # (B, N, P, C)
        else:
            qkv = self.qkv_proj(inputs)  # (B, N, P, 1 + 2C)
            query, key, value = qkv[..., :1], qkv[..., 1 : 1 + e], qkv[..., 1 + e :]
            scores = backend_ops.softmax(ops.cast(query, "float32"), axis=1)  # over the N patches
            scores = ops.cast(self.dropout(scores, training=training), inputs.dtype)
            context = ops.sum(key * scores, axis=1, keepdims=True)  # (B, 1, P, C)
            value = ops.relu(value)
        return self.out_proj(value * context)  # (B, N, P, C)

    def fuse(self, scale=None, shift=None):
        """The inference form in place; `scale`/`shift` (C,): an affine of the input (a GroupNorm's)
        taken into the projections, conv(x * scale + shift) = conv_{kernel * scale}(x) + shift @ kernel."""
        if self.fused:
            if scale is not None:
                raise ValueError(f"{self.name}: already fused, cannot take an input affine")
            return
        conv = self.qkv_proj.convolution
        kernel, bias = _numpy(conv.kernel)[0, 0], _numpy(conv.bias)  # (C, 1 + 2C), (1 + 2C,)
        if scale is not None:
            bias = bias + np.asarray(shift, np.float64) @ kernel
            kernel = kernel * np.asarray(scale, np.float64)[:, None]
        e, c = self.embed_dim, kernel.shape[0]
        _replace(self, "qkv_proj", None, None)
        self.fused = True
        with _state_unlocked(self):
            self._make_split_projections()
        patches = (None, None, None, c)
        for layer, columns in ((self.query_proj, slice(0, 1)), (self.value_proj, slice(1 + e, None))):
            layer.build(patches)
            layer.convolution.kernel.assign(kernel[None, None, :, columns].astype(layer.convolution.kernel.dtype))
            layer.convolution.bias.assign(bias[columns].astype(layer.convolution.bias.dtype))
        self.key_proj.build((None, None, c))
        self.key_proj.kernel.assign(kernel[:, 1 : 1 + e].astype(self.key_proj.kernel.dtype))
        self.key_proj.bias.assign(bias[1 : 1 + e].astype(self.key_proj.bias.dtype))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.embed_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(embed_dim=self.embed_dim, attn_dropout=self.attn_dropout, fused=self.fused)
        return config


class FFN(keras.layers.Layer):
    """1x1 conv (bias, activation) -> dropout -> 1x1 conv (bias) -> dropout."""

    def __init__(self, embed_dim, hidden_dim, ffn_dropout=0.0, activation="swish", **kwargs):
        super().__init__(**kwargs)
        _check_positive_int(self.name, "embed_dim", embed_dim)
        _check_positive_int(self.name, "hidden_dim", hidden_dim)
        _check_probability(self.name, "ffn_dropout", ffn_dropout)
        _check_activation(self.name, activation)
        self.embed_dim = embed_dim
        self.hidden_dim = hidden_dim
        self.ffn_dropout = ffn_dropout
        self.activation = activation
        policy = self.dtype_policy
        self.conv1 = ConvBN(hidden_dim, 1, use_bias=True, use_normalization=False, activation=activation, dtype=policy, name="conv1")
        self.conv2 = ConvBN(embed_dim, 1, use_bias=True, use_normalization=False, dtype=policy, name="conv2")
        self.dropout1 = keras.layers.Dropout(ffn_dropout, autocast=False, dtype=policy, name="dropout1")
        self.dropout2 = keras.layers.Dropout(ffn_dropout, autocast=False, dtype=policy, name="dropout2")

    def build(self, input_shape):
        self.conv1.build(input_shape)
        self.conv2.build(tuple(input_shape[:-1]) + (self.hidden_dim,))

    def call(self, inputs, training=None):
        x = self.dropout1(self.conv1(inputs), training=training)
        return self.dropout2(self.conv2(x), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.embed_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            embed_dim=self.embed_dim, hidden_dim=self.hidden_dim, ffn_dropout=self.ffn_dropout, activation=self.activation
        )
        return config


class TransformerLayer(keras.layers.Layer):
    """Pre-norm block: x + attention(norm(x)), then x + ffn(norm(x)), on (B, N, P, C) patches.

    Fused: the norms keep their statistics only; their affines are folded into the attention's
    projections and the FFN's first 1x1 conv (both linear in their input).
    """

    def __init__(
        self,
        embed_dim,
        ffn_dim,
        attn_dropout=0.0,
        ffn_dropout=0.0,
        layer_norm_eps=GN_EPSILON,
        activation="swish",
        fused=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_positive_int(self.name, "embed_dim", embed_dim)
        _check_positive_int(self.name, "ffn_dim", ffn_dim)
        _check_epsilon(self.name, "layer_norm_eps", layer_norm_eps)
        self.embed_dim = embed_dim
        self.ffn_dim = ffn_dim
        self.attn_dropout = attn_dropout
        self.ffn_dropout = ffn_dropout
        self.layer_norm_eps = layer_norm_eps
        self.activation = activation
        self.fused = bool(fused)
        policy = self.dtype_policy
        self.layernorm_before = layer_norm(layer_norm_eps, not self.fused, policy, "layernorm_before")
        self.attention = LinearSelfAttention(embed_dim, attn_dropout, fused=self.fused, dtype=policy, name="attention")
        self.layernorm_after = layer_norm(layer_norm_eps, not self.fused, policy, "layernorm_after")
        self.ffn = FFN(embed_dim, ffn_dim, ffn_dropout, activation, dtype=policy, name="ffn")

    def build(self, input_shape):
        for layer in (self.layernorm_before, self.attention, self.layernorm_after, self.ffn):
            layer.build(input_shape)

    def call(self, inputs, training=None):
        x = inputs + self.attention(self.layernorm_before(inputs), training=training)
        return x + self.ffn(self.layernorm_after(x), training=training)

    def fuse(self):
        if self.fused:
            return
        before, after = self.layernorm_before, self.layernorm_after
        self.attention.fuse(scale=_numpy(before.gamma), shift=_numpy(before.beta))
        self.ffn.conv1.fold_input_affine(_numpy(after.gamma), _numpy(after.beta))
        patches = (None, None, None, self.embed_dim)
        policy = self.dtype_policy
        _replace(self, "layernorm_before", layer_norm(self.layer_norm_eps, False, policy, "layernorm_before"), patches)
        _replace(self, "layernorm_after", layer_norm(self.layer_norm_eps, False, policy, "layernorm_after"), patches)
        self.fused = True

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            embed_dim=self.embed_dim,
            ffn_dim=self.ffn_dim,
            attn_dropout=self.attn_dropout,
            ffn_dropout=self.ffn_dropout,
            layer_norm_eps=self.layer_norm_eps,
            activation=self.activation,
            fused=self.fused,
        )
        return config


# ------------------------------------------------------------- patch unfold/fold
def unfold_patches(x, patch_h, patch_w):
    """(B, H, W, C) with H % patch_h == W % patch_w == 0 -> (B, N, P, C); one rank-4 transpose."""
    b, h, w, c = ops.shape(x)
    nh, nw = h // patch_h, w // patch_w
    x = ops.reshape(x, (b * nh, patch_h, nw, patch_w * c))  # (B*nh, ph, nw, pw*C)
    x = ops.transpose(x, (0, 2, 1, 3))  # (B*nh, nw, ph, pw*C)
    return ops.reshape(x, (b, nh * nw, patch_h * patch_w, c))  # (B, N, P, C)


def fold_patches(x, height, width, patch_h, patch_w):
    """(B, N, P, C) -> (B, height, width, C); the inverse of `unfold_patches`."""
    b, _, _, c = ops.shape(x)
    nh, nw = height // patch_h, width // patch_w
    x = ops.reshape(x, (b * nh, nw, patch_h, patch_w * c))  # (B*nh, nw, ph, pw*C)
    x = ops.transpose(x, (0, 2, 1, 3))  # (B*nh, ph, nw, pw*C)
    return ops.reshape(x, (b, height, width, c))  # (B, H, W, C)


def _linear_interpolation_matrix(in_size, out_size, dtype):
    """(out_size, in_size) weights of 1-D linear interpolation with align_corners=True."""
    in_size_f = ops.cast(in_size, "float32")
    out_size_f = ops.cast(out_size, "float32")
    scale = (in_size_f - 1.0) / ops.maximum(out_size_f - 1.0, 1.0)
    position = ops.cast(ops.arange(out_size), "float32") * scale  # source coordinate of each output
    low = ops.floor(position)
    frac = ops.expand_dims(position - low, 1)
    low = ops.cast(low, "int32")
    high = ops.minimum(low + 1, ops.cast(in_size, "int32") - 1)
    matrix = ops.one_hot(low, in_size) * (1.0 - frac) + ops.one_hot(high, in_size) * frac
    return ops.cast(matrix, dtype)


def resize_bilinear_align_corners(x, out_h, out_w):
    """Bilinear resize of (B, H, W, C) with align_corners=True (PyTorch's F.interpolate semantics).

    Written as two small matrix products so it runs on every backend, with dynamic sizes, and
    exports without the resize ops Keras cannot serialise.
    """
    _, h, w, _ = ops.shape(x)
    rows = _linear_interpolation_matrix(h, out_h, x.dtype)  # (out_h, H)
    cols = _linear_interpolation_matrix(w, out_w, x.dtype)  # (out_w, W)
    x = ops.einsum("oh,bhwc->bowc", rows, x)  # (B, out_h, W, C)
    return ops.einsum("pw,bowc->bopc", cols, x)  # (B, out_h, out_w, C)


def _is_static(*values):
    return all(isinstance(v, int) for v in values)


# ----------------------------------------------------------- MobileViTV2 block
class MobileViTV2Block(keras.layers.Layer):
    """A MobileViTV2 stage: optional downsampling InvertedResidual, local depthwise kxk conv, 1x1 conv
    to the attention width, unfold into patches, `n_attn_blocks` TransformerLayers, GroupNorm, fold,
    1x1 conv + BN back to `out_channels`.

    Args:
        out_channels: channels of the stage (and of the downsampling block).
        attn_unit_dim: channels inside the transformer.
        n_attn_blocks: number of TransformerLayers.
        ffn_multiplier: FFN width = `int(ffn_multiplier * attn_unit_dim // 16 * 16)`.
        downsample_strides: 2 to downsample first, 1 for a dilated stage, None for no downsampling block.
        downsample_dilation: dilation of the downsampling block's depthwise conv.
        local_dilation: dilation of the local kxk depthwise conv (ml-cvnets dilates it in dilated stages).
        patch_size: (patch height, patch width).
        compat: "cvnets" resizes a map not divisible by the patch size up to the next multiple
            (bilinear, align_corners=True) before the local conv; "transformers" drops the remainder at
            unfold and leaves zeros there at fold.
        fused: build the inference form of every sub-layer.
    """

    def __init__(
        self,
        out_channels,
        attn_unit_dim,
        n_attn_blocks=2,
        ffn_multiplier=2,
        downsample_strides=2,
        downsample_dilation=1,
        local_dilation=1,
        patch_size=(2, 2),
        conv_kernel_size=3,
        expand_ratio=2.0,
        activation="swish",
        attn_dropout=0.0,
        ffn_dropout=0.0,
        layer_norm_eps=GN_EPSILON,
        compat="cvnets",
        fused=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_positive_int(self.name, "out_channels", out_channels)
        _check_positive_int(self.name, "attn_unit_dim", attn_unit_dim)
        _check_positive_int(self.name, "n_attn_blocks", n_attn_blocks)
        if downsample_strides not in (None, 1, 2):
            raise ValueError(f"{self.name}: `downsample_strides` must be None, 1 or 2, received {downsample_strides!r}")
        if compat not in COMPAT_MODES:
            raise ValueError(f"{self.name}: `compat` must be one of {COMPAT_MODES}, received {compat!r}")
        patch_size = tuple(patch_size) if isinstance(patch_size, (list, tuple)) else (patch_size, patch_size)
        if len(patch_size) != 2 or not all(isinstance(p, int) and p > 0 for p in patch_size):
            raise ValueError(f"{self.name}: `patch_size` must be two positive integers, received {patch_size!r}")
        self.out_channels = out_channels
        self.attn_unit_dim = attn_unit_dim
        self.n_attn_blocks = n_attn_blocks
        self.ffn_multiplier = ffn_multiplier
        self.downsample_strides = downsample_strides
        self.downsample_dilation = downsample_dilation
        self.local_dilation = local_dilation
        self.patch_size = patch_size
        self.conv_kernel_size = conv_kernel_size
        self.expand_ratio = expand_ratio
        self.activation = activation
        self.attn_dropout = attn_dropout
        self.ffn_dropout = ffn_dropout
        self.layer_norm_eps = layer_norm_eps
        self.compat = compat
        self.fused = bool(fused)

        policy = self.dtype_policy
        fused = self.fused
        self.downsampling_layer = (
            InvertedResidual(
                out_channels,
                strides=downsample_strides,
                dilation_rate=downsample_dilation,
                expand_ratio=expand_ratio,
                activation=activation,
                fused=fused,
                dtype=policy,
                name="downsampling_layer",
            )
            if downsample_strides is not None
            else None
        )
        self.conv_kxk = ConvBN(
            kernel_size=conv_kernel_size,
            dilation_rate=local_dilation,
            depthwise=True,
            activation=activation,
            fused=fused,
            dtype=policy,
            name="conv_kxk",
        )
        self.conv_1x1 = ConvBN(attn_unit_dim, 1, use_normalization=False, fused=fused, dtype=policy, name="conv_1x1")
        ffn_dim = int((ffn_multiplier * attn_unit_dim) // 16 * 16)
        self.transformer = [
            TransformerLayer(
                attn_unit_dim,
                ffn_dim,
                attn_dropout=attn_dropout,
                ffn_dropout=ffn_dropout,
                layer_norm_eps=layer_norm_eps,
                activation=activation,
                fused=fused,
                dtype=policy,
                name=f"transformer_layer_{i}",
            )
            for i in range(n_attn_blocks)
        ]
        self.layernorm = layer_norm(layer_norm_eps, dtype=policy, name="layernorm")
        self.conv_projection = ConvBN(out_channels, 1, fused=fused, dtype=policy, name="conv_projection")

    def build(self, input_shape):
        shape = input_shape
        if self.downsampling_layer is not None:
            self.downsampling_layer.build(shape)
            shape = self.downsampling_layer.compute_output_shape(shape)
        shape = (shape[0], None, None, shape[3])
        self.conv_kxk.build(shape)
        self.conv_1x1.build(shape)
        patches = (None, None, self.patch_size[0] * self.patch_size[1], self.attn_unit_dim)
        for layer in self.transformer:
            layer.build(patches)
        self.layernorm.build(patches)
        self.conv_projection.build((None, None, None, self.attn_unit_dim))

    def _resize_to_patch_multiple(self, x):
        """cvnets: bilinear (align_corners=True) resize up to the next multiple of the patch size."""
        ph, pw = self.patch_size
        _, h, w, _ = ops.shape(x)
        new_h = (h + ph - 1) // ph * ph
        new_w = (w + pw - 1) // pw * pw
        if _is_static(h, w):
            return x if (new_h, new_w) == (h, w) else resize_bilinear_align_corners(x, new_h, new_w)
        return ops.cond(
            ops.logical_or(ops.not_equal(h % ph, 0), ops.not_equal(w % pw, 0)),
            lambda: resize_bilinear_align_corners(x, new_h, new_w),
            lambda: x,
        )

    def call(self, inputs, training=None):
        x = inputs
        if self.downsampling_layer is not None:
            x = self.downsampling_layer(x, training=training)
        if self.compat == "cvnets":
            x = self._resize_to_patch_multiple(x)
        x = self.conv_kxk(x, training=training)
        x = self.conv_1x1(x)

        ph, pw = self.patch_size
        _, height, width, _ = ops.shape(x)
        crop_h, crop_w = height // ph * ph, width // pw * pw
        if self.compat == "transformers":
            x = x[:, :crop_h, :crop_w, :]  # unfold drops the remainder
        patches = unfold_patches(x, ph, pw)  # (B, H, W, C) -> (B, N, P, C)
        for layer in self.transformer:
            patches = layer(patches, training=training)
        patches = self.layernorm(patches)
        x = fold_patches(patches, crop_h, crop_w, ph, pw)  # (B, N, P, C) -> (B, H, W, C)
        if self.compat == "transformers":
            # fold leaves zeros where unfold dropped pixels
            x = ops.pad(x, [[0, 0], [0, height - crop_h], [0, width - crop_w], [0, 0]])
        return self.conv_projection(x, training=training)

    def fuse(self):
        _fuse_all(self, [self.downsampling_layer, self.conv_kxk, self.conv_1x1, *self.transformer, self.conv_projection])

    def compute_output_shape(self, input_shape):
        shape = input_shape
        if self.downsampling_layer is not None:
            shape = self.downsampling_layer.compute_output_shape(shape)
        b, h, w, _ = shape
        if self.compat == "cvnets":
            ph, pw = self.patch_size
            h = None if h is None else (h + ph - 1) // ph * ph
            w = None if w is None else (w + pw - 1) // pw * pw
        return (b, h, w, self.out_channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            out_channels=self.out_channels,
            attn_unit_dim=self.attn_unit_dim,
            n_attn_blocks=self.n_attn_blocks,
            ffn_multiplier=self.ffn_multiplier,
            downsample_strides=self.downsample_strides,
            downsample_dilation=self.downsample_dilation,
            local_dilation=self.local_dilation,
            patch_size=list(self.patch_size),
            conv_kernel_size=self.conv_kernel_size,
            expand_ratio=self.expand_ratio,
            activation=self.activation,
            attn_dropout=self.attn_dropout,
            ffn_dropout=self.ffn_dropout,
            layer_norm_eps=self.layer_norm_eps,
            compat=self.compat,
            fused=self.fused,
        )
        return config


# ------------------------------------------------------------------------- ASPP
class ASPPPooling(keras.layers.Layer):
    """Image-level branch of ASPP: global average pool, 1x1 conv + BN + ReLU, broadcast back to (h, w).

    The references upsample the 1x1 map bilinearly, which for a 1x1 source is a broadcast.
    """

    def __init__(self, filters, fused=False, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int(self.name, "filters", filters)
        self.filters = filters
        self.fused = bool(fused)
        self.conv_1x1 = ConvBN(filters, 1, activation="relu", fused=self.fused, dtype=self.dtype_policy, name="conv_1x1")

    def build(self, input_shape):
        self.conv_1x1.build((input_shape[0], 1, 1, input_shape[-1]))

    def call(self, inputs, training=None):
        b, h, w, _ = ops.shape(inputs)
        pooled = ops.mean(inputs, axis=(1, 2), keepdims=True)  # (B, 1, 1, C_in)
        pooled = self.conv_1x1(pooled, training=training)  # (B, 1, 1, C)
        return ops.broadcast_to(pooled, (b, h, w, self.filters))  # (B, h, w, C)

    def fuse(self):
        _fuse_all(self, [self.conv_1x1])

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, fused=self.fused)
        return config


class ASPP(keras.layers.Layer):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3, image pooling; concat, 1x1 project, dropout."""

    def __init__(self, filters, atrous_rates=(6, 12, 18), dropout=0.1, fused=False, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int(self.name, "filters", filters)
        atrous_rates = list(atrous_rates)
        if len(atrous_rates) != 3:
            raise ValueError(f"{self.name}: `atrous_rates` must have 3 entries, received {atrous_rates!r}")
        _check_probability(self.name, "dropout", dropout)
        self.filters = filters
        self.atrous_rates = atrous_rates
        self.dropout_rate = dropout
        self.fused = bool(fused)
        common = dict(activation="relu", fused=self.fused, dtype=self.dtype_policy)
        self.convs = [ConvBN(filters, 1, name="convs_0", **common)]
        self.convs += [
            ConvBN(filters, 3, dilation_rate=rate, name=f"convs_{i + 1}", **common) for i, rate in enumerate(atrous_rates)
        ]
        self.convs.append(ASPPPooling(filters, fused=self.fused, dtype=self.dtype_policy, name="convs_4"))
        self.project = ConvBN(filters, 1, name="project", **common)
        self.dropout = keras.layers.Dropout(dropout, autocast=False, dtype=self.dtype_policy, name="dropout")

    def build(self, input_shape):
        for conv in self.convs:
            conv.build(input_shape)
        self.project.build(tuple(input_shape[:-1]) + (5 * self.filters,))

    def call(self, inputs, training=None):
        pyramid = ops.concatenate([conv(inputs, training=training) for conv in self.convs], axis=-1)
        return self.dropout(self.project(pyramid, training=training), training=training)

    def fuse(self):
        _fuse_all(self, [*self.convs, self.project])

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters, atrous_rates=list(self.atrous_rates), dropout=self.dropout_rate, fused=self.fused
        )
        return config


class DeepLabV3Head(keras.layers.Layer):
    """ASPP -> Dropout2d -> 1x1 conv classifier (bias), on the last stage's feature map."""

    def __init__(
        self,
        num_labels,
        aspp_filters=512,
        atrous_rates=(6, 12, 18),
        aspp_dropout=0.1,
        classifier_dropout=0.1,
        fused=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_positive_int(self.name, "num_labels", num_labels)
        _check_probability(self.name, "classifier_dropout", classifier_dropout)
        self.num_labels = num_labels
        self.aspp_filters = aspp_filters
        self.atrous_rates = list(atrous_rates)
        self.aspp_dropout = aspp_dropout
        self.classifier_dropout = classifier_dropout
        self.fused = bool(fused)
        policy = self.dtype_policy
        self.aspp = ASPP(aspp_filters, atrous_rates, aspp_dropout, fused=self.fused, dtype=policy, name="aspp")
        self.dropout = keras.layers.SpatialDropout2D(classifier_dropout, dtype=policy, name="dropout")
        # Dropout layers are built at construction and so have no path: under a DTypePolicyMap they
        # would take its default policy and cast to it (hence `autocast=False` on every dropout
        # here; SpatialDropout2D's constructor does not take it). A dropout changes no dtype.
        self.dropout.autocast = False
        self.classifier = ConvBN(num_labels, 1, use_bias=True, use_normalization=False, dtype=policy, name="classifier")

    def build(self, input_shape):
        self.aspp.build(input_shape)
        self.classifier.build(tuple(input_shape[:-1]) + (self.aspp_filters,))

    def call(self, inputs, training=None):
        x = self.aspp(inputs, training=training)
        x = self.dropout(x, training=training)
        return self.classifier(x)

    def fuse(self):
        _fuse_all(self, [self.aspp, self.classifier])

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_labels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_labels=self.num_labels,
            aspp_filters=self.aspp_filters,
            atrous_rates=list(self.atrous_rates),
            aspp_dropout=self.aspp_dropout,
            classifier_dropout=self.classifier_dropout,
            fused=self.fused,
        )
        return config


# Every layer of this module, for `custom_objects` / registration.
for _cls in (
    ConvBN, InvertedResidual, MobileNetStage, LinearSelfAttention, FFN, TransformerLayer,
    MobileViTV2Block, ASPPPooling, ASPP, DeepLabV3Head,
):
    keras.saving.register_keras_serializable(package="keras_mobilevitv2")(_cls)
del _cls
