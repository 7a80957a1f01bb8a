"""The MobileViTV2 building blocks, channels-last, written with `keras.ops`.

Layer names mirror the module names of Hugging Face's `modeling_mobilevitv2.py` (`convolution`,
`normalization`, `conv_kxk`, `transformer.layer.0`, `layernorm_before`, `qkv_proj`, ...), so a Keras
variable path `encoder.layer.2/conv_kxk/convolution/depthwise_kernel` names the PyTorch tensor
`encoder.layer.2.conv_kxk.convolution.weight`; `conversion/hf.py` relies on that.

Inside a MobileViTV2 block the patches are laid out as (B, N, P, C): N = number of patches
(row-major over the patch grid), P = pixels in a patch, C = channels. The references use
(B, C, P, N); every operation of the block is either pointwise in (N, P), a reduction over N
(the separable attention) or a reduction over all of (N, P, C) (the GroupNorm "layer norm"), so
the order of the axes does not change a single number, and (B, N, P, C) needs one rank-4
transpose to unfold and one to fold.
"""

import keras
from keras import ops

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


def _bias_add(x, bias):
    """x + bias over the last axis. On TensorFlow `tf.nn.bias_add`: grappler fuses conv + BiasAdd
    (+ activation) into one kernel only when it sees that op; an `Add` of a computed bias is left alone."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.nn.bias_add(x, bias)
    return x + bias


def _conv2d(x, kernel, strides=1, padding="valid", dilation_rate=1):
    """`ops.conv` of an NHWC tensor. On TensorFlow `tf.nn.conv2d`: dilated, it is one native
    (oneDNN) conv that grappler fuses with its bias and activation, where `ops.conv` goes through
    space-to-batch (the ASPP's rate-6/12/18 convs: 490 -> 350 ms for a 512x512 segmentation); and
    eagerly it skips the `tf.function` `ops.conv` builds on every call."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.nn.conv2d(x, kernel, strides, padding.upper(), dilations=dilation_rate)
    return ops.conv(x, kernel, strides, padding, dilation_rate=dilation_rate)


def _softmax(x, axis):
    """`ops.softmax`. On TensorFlow `tf.nn.softmax`: one patch (N = 1, a map the size of the patch)
    is a valid input, about which `ops.softmax` warns on every call."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.nn.softmax(x, axis=axis)
    return ops.softmax(x, axis=axis)


# --------------------------------------------------------------------------- ConvBN
class ConvBN(keras.layers.Layer):
    """Conv (or depthwise conv) -> optional BatchNorm -> optional activation.

    The Keras twin of transformers' `MobileViTV2ConvLayer` / ml-cvnets' `ConvLayer2d`: PyTorch pads
    `(k - 1) // 2 * dilation` on every side. For stride 1 that is Keras' `"same"`; for stride 2
    `"same"` would pad only bottom/right, so the padding is explicit (see `_convolve`).

    Outside training the BatchNorm is folded into the conv (`_folded_kernel_and_bias`); in training
    it runs on batch statistics as one fused op (`_batchnorm_training`). Both compute what
    `keras.layers.BatchNormalization` computes.

    Args:
        filters: output channels (ignored for `depthwise=True`, which keeps the channel count).
        kernel_size: odd kernel size.
        strides: 1 or 2.
        dilation_rate: dilation of the kernel.
        depthwise: a depthwise conv (groups == channels in PyTorch).
        use_bias: conv bias.
        use_normalization: a BatchNorm after the conv.
        activation: None or the name of an activation in `ACTIVATIONS`.
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
        self._pad = (kernel_size - 1) // 2 * dilation_rate
        padding = "valid" if strides > 1 else "same"
        common = dict(
            kernel_size=kernel_size,
            strides=strides,
            dilation_rate=dilation_rate,
            padding=padding,
            use_bias=use_bias,
            dtype=self.dtype_policy,
            name="convolution",
        )
        if depthwise:
            self.convolution = keras.layers.DepthwiseConv2D(**common)
        else:
            self.convolution = keras.layers.Conv2D(filters, **common)
        self.normalization = (
            keras.layers.BatchNormalization(
                epsilon=BN_EPSILON, momentum=BN_MOMENTUM, dtype=self.dtype_policy, name="normalization"
            )
            if use_normalization
            else None
        )
        self._activation_fn = ACTIVATIONS[activation] if activation else None

    def build(self, input_shape):
        if self.strides > 1:
            h, w = input_shape[1], input_shape[2]
            input_shape = (
                input_shape[0],
                None if h is None else h + 2 * self._pad,
                None if w is None else w + 2 * self._pad,
                input_shape[3],
            )
        self.convolution.build(input_shape)
        if self.normalization is not None:
            self.normalization.build(self.convolution.compute_output_shape(input_shape))

    def call(self, inputs, training=None):
        batch_statistics = self.normalization is not None and training and self.normalization.trainable
        if batch_statistics:
            kernel = self.convolution.kernel
            bias = self.convolution.bias if self.use_bias else None
        else:
            kernel, bias = self._folded_kernel_and_bias()
        x = self._convolve(inputs, kernel, training)
        if bias is not None:
            x = _bias_add(x, bias)
        if batch_statistics:
            x = self._batchnorm_training(x)
        if self._activation_fn is not None:
            x = self._activation_fn(x)
        return x

    def _convolve(self, x, kernel, training):
        """The conv with PyTorch's padding: `(k - 1) // 2 * dilation` on every side."""
        conv = self.convolution
        if self.strides == 1:
            if self.depthwise:
                return ops.depthwise_conv(x, kernel, 1, "same", dilation_rate=conv.dilation_rate)
            return _conv2d(x, kernel, 1, "same", dilation_rate=conv.dilation_rate)
        if self.depthwise and not training:
            # A k x k kernel with a zero row and column appended, padded "same" at stride 2, reads
            # exactly PyTorch's windows (for even and odd sizes) without a padded copy of the input:
            # oneDNN fuses no pad into a depthwise conv (grappler does for a regular conv). 2-4%
            # faster inference; in training the larger kernel's gradients cost more than the pad.
            kernel = ops.pad(kernel, [[0, 1], [0, 1], [0, 0], [0, 0]])  # (k+1, k+1, C, 1)
            return ops.depthwise_conv(x, kernel, self.strides, "same")
        p = self._pad
        x = ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])  # (B, H, W, C) -> (B, H+2p, W+2p, C)
        if self.depthwise:
            return ops.depthwise_conv(x, kernel, self.strides, "valid")
        return _conv2d(x, kernel, self.strides, "valid")

    def _batchnorm_training(self, x):
        """BatchNorm with batch statistics, updating the moving ones, as `keras.layers.BatchNormalization`.

        On TensorFlow one `FusedBatchNormV3` op (and one gradient op) instead of Keras' moments and
        normalisation (a dozen element-wise ops forward, more backward). Same arithmetic: statistics
        and normalisation in float32, the moving variance averages the biased batch variance.
        """
        bn = self.normalization
        if keras.backend.backend() != "tensorflow":
            return bn(x, training=True)
        import tensorflow as tf

        empty = tf.zeros([0], tf.float32)
        y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=tf.cast(x, tf.float32),
            scale=tf.cast(bn.gamma, tf.float32),
            offset=tf.cast(bn.beta, tf.float32),
            mean=empty,
            variance=empty,
            epsilon=bn.epsilon,
            exponential_avg_factor=1.0,
            data_format="NHWC",
            is_training=True,
        )
        # The op returns the Bessel-corrected variance (n / (n - 1), for n > 1); Keras averages the biased one.
        n = tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)
        variance = variance * tf.maximum(n - 1.0, 0.0) / n
        momentum = bn.momentum
        bn.moving_mean.assign(bn.moving_mean * momentum + tf.cast(mean, bn.moving_mean.dtype) * (1.0 - momentum))
        bn.moving_variance.assign(
            bn.moving_variance * momentum + tf.cast(variance, bn.moving_variance.dtype) * (1.0 - momentum)
        )
        return tf.cast(y, self.compute_dtype)

    def _folded_kernel_and_bias(self):
        """The conv's (kernel, bias or None), with an inference BatchNorm folded in.

        conv then BatchNorm(moving statistics) is one conv with kernel * s and bias
        beta + (bias - moving_mean) * s, s = gamma / sqrt(moving_variance + eps): the same function,
        one pass over the output instead of three, and in a graph grappler fuses conv + bias (+ SiLU,
        + a residual add) into one oneDNN kernel. Folded in float32 on every call from the variables,
        so it follows their updates; costs a few ops on (C_out,)-sized tensors.
        """
        conv = self.convolution
        if self.normalization is None:
            return conv.kernel, (conv.bias if self.use_bias else None)
        kernel, bias = self.folded_float32()
        return ops.cast(kernel, self.compute_dtype), ops.cast(bias, self.compute_dtype)

    def folded_float32(self):
        """(kernel, bias or None) in float32, an inference BatchNorm folded in (see
        `_folded_kernel_and_bias`); `compile_for_inference` snapshots them."""
        conv, bn = self.convolution, self.normalization
        f32 = lambda v: ops.cast(v, "float32")  # noqa: E731
        if bn is None:
            return f32(conv.kernel), (f32(conv.bias) if self.use_bias else None)
        scale = f32(bn.gamma) * ops.rsqrt(f32(bn.moving_variance) + bn.epsilon)  # (C_out,)
        bias = f32(conv.bias) - f32(bn.moving_mean) if self.use_bias else -f32(bn.moving_mean)
        bias = f32(bn.beta) + bias * scale
        if self.depthwise:
            kernel = f32(conv.kernel) * ops.reshape(scale, (1, 1, -1, 1))  # (kh, kw, C, 1)
        else:
            kernel = f32(conv.kernel) * scale  # (kh, kw, C_in, C_out)
        return kernel, bias

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        out_c = c if self.depthwise else self.filters

        def size(n):
            if n is None:
                return None
            return (n + 2 * self._pad - self.dilation_rate * (self.kernel_size - 1) - 1) // self.strides + 1

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
        )
        return config


# ------------------------------------------------------------------- GroupNorm1
class GroupNorm1(keras.layers.Layer):
    """GroupNorm with one group: normalises each sample over all of its axes, then a per-channel affine.

    This is the "layer norm" of MobileViTV2 (`nn.GroupNorm(1, C)` in PyTorch, `LayerNorm2D` in
    ml-cvnets): statistics over (H, W, C), or (N, P, C) on patches. Computed in float32 under mixed
    precision.
    """

    def __init__(self, epsilon=GN_EPSILON, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(epsilon, (int, float)) or not epsilon > 0:
            raise ValueError(f"{self.name}: `epsilon` must be a positive number, received {epsilon!r}")
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"{self.name}: the channel axis must be known, received input shape {input_shape}")
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma", dtype=self.variable_dtype)
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta", dtype=self.variable_dtype)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        axes = tuple(range(1, len(inputs.shape)))
        mean = ops.mean(x, axis=axes, keepdims=True)
        centered = x - mean
        variance = ops.mean(ops.square(centered), axis=axes, keepdims=True)
        scale = ops.rsqrt(variance + self.epsilon) * ops.cast(self.gamma, "float32")  # (B, 1, ..., C)
        x = centered * scale + ops.cast(self.beta, "float32")
        return ops.cast(x, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon)
        return config


# ------------------------------------------------------------- InvertedResidual
class InvertedResidual(keras.layers.Layer):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise (stride, dilation) -> 1x1 reduce, + residual.

    Hidden width `make_divisible(round(in_channels * expand_ratio), 8)`; the residual is used when the
    stride is 1 and the channel count is unchanged.
    """

    def __init__(self, out_channels, strides=1, dilation_rate=1, expand_ratio=2.0, activation="swish", **kwargs):
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

    def build(self, input_shape):
        in_channels = input_shape[-1]
        hidden = make_divisible(int(round(in_channels * self.expand_ratio)), 8)
        self.use_residual = self.strides == 1 and in_channels == self.out_channels
        self.expand_1x1 = ConvBN(hidden, 1, activation=self.activation, dtype=self.dtype_policy, name="expand_1x1")
        self.conv_3x3 = ConvBN(
            kernel_size=3,
            strides=self.strides,
            dilation_rate=self.dilation_rate,
            depthwise=True,
            activation=self.activation,
            dtype=self.dtype_policy,
            name="conv_3x3",
        )
        self.reduce_1x1 = ConvBN(self.out_channels, 1, dtype=self.dtype_policy, name="reduce_1x1")
        self.expand_1x1.build(input_shape)
        shape = self.expand_1x1.compute_output_shape(input_shape)
        self.conv_3x3.build(shape)
        self.reduce_1x1.build(self.conv_3x3.compute_output_shape(shape))

    def call(self, inputs, training=None):
        x = self.expand_1x1(inputs, training=training)
        x = self.conv_3x3(x, training=training)
        x = self.reduce_1x1(x, training=training)
        return inputs + x if self.use_residual else x

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
        )
        return config


class MobileNetStage(keras.layers.Layer):
    """`num_blocks` InvertedResiduals (stages 1 and 2); only the first one strides."""

    def __init__(self, out_channels, num_blocks=1, strides=1, expand_ratio=2.0, activation="swish", **kwargs):
        super().__init__(**kwargs)
        _check_positive_int(self.name, "out_channels", out_channels)
        _check_positive_int(self.name, "num_blocks", num_blocks)
        self.out_channels = out_channels
        self.num_blocks = num_blocks
        self.strides = strides
        self.expand_ratio = expand_ratio
        self.activation = activation
        self.blocks = [
            InvertedResidual(
                out_channels,
                strides=strides if i == 0 else 1,
                expand_ratio=expand_ratio,
                activation=activation,
                dtype=self.dtype_policy,
                name=f"layer.{i}",
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
        )
        return config


# ---------------------------------------------------------- separable attention
class LinearSelfAttention(keras.layers.Layer):
    """Separable self-attention of MobileViTV2, on patches laid out (B, N, P, C).

    A 1x1 projection gives one query channel, C key and C value channels; the query is
    softmax-normalised over the N patches (in float32), the keys are summed over N with those
    scores into one context vector per pixel-in-patch, which gates ReLU(values); a 1x1 output
    projection follows. Cost is linear in N.
    """

    def __init__(self, embed_dim, attn_dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int(self.name, "embed_dim", embed_dim)
        _check_probability(self.name, "attn_dropout", attn_dropout)
        self.embed_dim = embed_dim
        self.attn_dropout = attn_dropout
        self.qkv_proj = ConvBN(
            1 + 2 * embed_dim, 1, use_bias=True, use_normalization=False, dtype=self.dtype_policy, name="qkv_proj"
        )
        self.out_proj = ConvBN(embed_dim, 1, use_bias=True, use_normalization=False, dtype=self.dtype_policy, name="out_proj")
        self.dropout = keras.layers.Dropout(attn_dropout, dtype=self.dtype_policy, name="attn_dropout")

    def build(self, input_shape):
        self.qkv_proj.build(input_shape)
        self.out_proj.build(tuple(input_shape[:-1]) + (self.embed_dim,))

    def call(self, inputs, training=None):
        # The keys are never formed per patch: with k_n = x_n W_k + b_k,
        #   sum_n s_n k_n = (sum_n s_n x_n) W_k + b_k sum_n s_n,
        # so the key projection runs once per pixel-in-patch on the score-weighted input, a third
        # of `qkv_proj`'s multiply-adds saved. Query and value are 1x1 convs with slices of its kernel.
        e = self.embed_dim
        conv = self.qkv_proj.convolution
        kernel, bias = conv.kernel, conv.bias  # (1, 1, C, 1 + 2C), (1 + 2C,)
        query = _bias_add(_conv2d(inputs, kernel[..., :1]), bias[:1])  # (B, N, P, 1)
        value = ops.relu(_bias_add(_conv2d(inputs, kernel[..., 1 + e :]), bias[1 + e :]))  # (B, N, P, C)
        scores = _softmax(ops.cast(query, "float32"), axis=1)  # over the N patches: (B, N, P, 1)
        scores = ops.cast(self.dropout(scores, training=training), inputs.dtype)
        pooled = ops.sum(inputs * scores, axis=1)  # (B, N, P, C) -> (B, P, C)
        context = ops.matmul(pooled, kernel[0, 0, :, 1 : 1 + e]) + bias[1 : 1 + e] * ops.sum(scores, axis=1)  # (B, P, C)
        out = value * ops.expand_dims(context, 1)  # (B, N, P, C)
        return self.out_proj(out)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.embed_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(embed_dim=self.embed_dim, attn_dropout=self.attn_dropout)
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
        self.conv1 = ConvBN(
            hidden_dim, 1, use_bias=True, use_normalization=False, activation=activation, dtype=self.dtype_policy, name="conv1"
        )
        self.conv2 = ConvBN(embed_dim, 1, use_bias=True, use_normalization=False, dtype=self.dtype_policy, name="conv2")
        self.dropout1 = keras.layers.Dropout(ffn_dropout, dtype=self.dtype_policy, name="dropout1")
        self.dropout2 = keras.layers.Dropout(ffn_dropout, dtype=self.dtype_policy, name="dropout2")

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
    """Pre-norm block: x + attention(norm(x)), then x + ffn(norm(x)), on (B, N, P, C) patches."""

    def __init__(
        self,
        embed_dim,
        ffn_dim,
        attn_dropout=0.0,
        ffn_dropout=0.0,
        layer_norm_eps=GN_EPSILON,
        activation="swish",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.ffn_dim = ffn_dim
        self.attn_dropout = attn_dropout
        self.ffn_dropout = ffn_dropout
        self.layer_norm_eps = layer_norm_eps
        self.activation = activation
        self.layernorm_before = GroupNorm1(layer_norm_eps, dtype=self.dtype_policy, name="layernorm_before")
        self.attention = LinearSelfAttention(embed_dim, attn_dropout, dtype=self.dtype_policy, name="attention")
        self.layernorm_after = GroupNorm1(layer_norm_eps, dtype=self.dtype_policy, name="layernorm_after")
        self.ffn = FFN(embed_dim, ffn_dim, ffn_dropout, activation, dtype=self.dtype_policy, name="ffn")

    def build(self, input_shape):
        for layer in (self.layernorm_before, self.attention, self.layernorm_after, self.ffn):
            layer.build(input_shape)

    def call(self, inputs, training=None):
        x = inputs + self.attention(self.layernorm_before(inputs), training=training)
        return x + self.ffn(self.layernorm_after(x), training=training)

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

        policy = self.dtype_policy
        self.downsampling_layer = (
            InvertedResidual(
                out_channels,
                strides=downsample_strides,
                dilation_rate=downsample_dilation,
                expand_ratio=expand_ratio,
                activation=activation,
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
            dtype=policy,
            name="conv_kxk",
        )
        self.conv_1x1 = ConvBN(attn_unit_dim, 1, use_normalization=False, dtype=policy, name="conv_1x1")
        ffn_dim = int((ffn_multiplier * attn_unit_dim) // 16 * 16)
        self.transformer = [
            TransformerLayer(
                attn_unit_dim,
                ffn_dim,
                attn_dropout=attn_dropout,
                ffn_dropout=ffn_dropout,
                layer_norm_eps=layer_norm_eps,
                activation=activation,
                dtype=policy,
                name=f"transformer.layer.{i}",
            )
            for i in range(n_attn_blocks)
        ]
        self.layernorm = GroupNorm1(layer_norm_eps, dtype=policy, name="layernorm")
        self.conv_projection = ConvBN(out_channels, 1, dtype=policy, name="conv_projection")

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
        )
        return config


# ------------------------------------------------------------------------- ASPP
class ASPPPooling(keras.layers.Layer):
    """Image-level branch of ASPP: global average pool, 1x1 conv + BN + ReLU, broadcast back to (h, w).

    The references upsample the 1x1 map bilinearly, which for a 1x1 source is a broadcast.
    """

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int(self.name, "filters", filters)
        self.filters = filters
        self.conv_1x1 = ConvBN(filters, 1, activation="relu", dtype=self.dtype_policy, name="conv_1x1")

    def build(self, input_shape):
        self.conv_1x1.build((input_shape[0], 1, 1, input_shape[-1]))

    def call(self, inputs, training=None):
        b, h, w, _ = ops.shape(inputs)
        pooled = ops.mean(inputs, axis=(1, 2), keepdims=True)  # (B, 1, 1, C_in)
        pooled = self.conv_1x1(pooled, training=training)  # (B, 1, 1, C)
        return ops.broadcast_to(pooled, (b, h, w, self.filters))  # (B, h, w, C)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters)
        return config


class ASPP(keras.layers.Layer):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3, image pooling; concat, 1x1 project, dropout."""

    def __init__(self, filters, atrous_rates=(6, 12, 18), dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int(self.name, "filters", filters)
        atrous_rates = list(atrous_rates)
        if len(atrous_rates) != 3:
            raise ValueError(f"{self.name}: `atrous_rates` must have 3 entries, received {atrous_rates!r}")
        _check_probability(self.name, "dropout", dropout)
        self.filters = filters
        self.atrous_rates = atrous_rates
        self.dropout_rate = dropout
        policy = self.dtype_policy
        self.convs = [ConvBN(filters, 1, activation="relu", dtype=policy, name="convs.0")]
        self.convs += [
            ConvBN(filters, 3, dilation_rate=rate, activation="relu", dtype=policy, name=f"convs.{i + 1}")
            for i, rate in enumerate(atrous_rates)
        ]
        self.convs.append(ASPPPooling(filters, dtype=policy, name="convs.4"))
        self.project = ConvBN(filters, 1, activation="relu", dtype=policy, name="project")
        self.dropout = keras.layers.Dropout(dropout, dtype=policy, name="dropout")

    def build(self, input_shape):
        for conv in self.convs:
            conv.build(input_shape)
        self.project.build(tuple(input_shape[:-1]) + (5 * self.filters,))

    def call(self, inputs, training=None):
        pyramid = ops.concatenate([conv(inputs, training=training) for conv in self.convs], axis=-1)
        return self.dropout(self.project(pyramid, training=training), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, atrous_rates=list(self.atrous_rates), dropout=self.dropout_rate)
        return config


class DeepLabV3Head(keras.layers.Layer):
    """ASPP -> Dropout2d -> 1x1 conv classifier (bias), on the last stage's feature map."""

    def __init__(self, num_labels, aspp_filters=512, atrous_rates=(6, 12, 18), aspp_dropout=0.1, classifier_dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int(self.name, "num_labels", num_labels)
        _check_probability(self.name, "classifier_dropout", classifier_dropout)
        self.num_labels = num_labels
        self.aspp_filters = aspp_filters
        self.atrous_rates = list(atrous_rates)
        self.aspp_dropout = aspp_dropout
        self.classifier_dropout = classifier_dropout
        policy = self.dtype_policy
        self.aspp = ASPP(aspp_filters, atrous_rates, aspp_dropout, dtype=policy, name="aspp")
        self.dropout = keras.layers.SpatialDropout2D(classifier_dropout, dtype=policy, name="dropout")
        self.classifier = ConvBN(num_labels, 1, use_bias=True, use_normalization=False, dtype=policy, name="classifier")

    def build(self, input_shape):
        self.aspp.build(input_shape)
        self.classifier.build(tuple(input_shape[:-1]) + (self.aspp_filters,))

    def call(self, inputs, training=None):
        x = self.aspp(inputs, training=training)
        x = self.dropout(x, training=training)
        return self.classifier(x)

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
        )
        return config


# Every layer of this module, for `custom_objects` / registration.
for _cls in (
    ConvBN, GroupNorm1, InvertedResidual, MobileNetStage, LinearSelfAttention, FFN, TransformerLayer,
    MobileViTV2Block, ASPPPooling, ASPP, DeepLabV3Head,
):
    keras.saving.register_keras_serializable(package="keras_mobilevitv2")(_cls)
del _cls
