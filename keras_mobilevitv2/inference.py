"""compile_for_inference: the fastest in-process inference callable of a MobileViTV2 model.

    import keras_mobilevitv2 as mv2
    model = mv2.from_pretrained("apple/mobilevitv2-1.0-imagenet1k-256")
    infer = mv2.compile_for_inference(model)
    logits = infer(pixel_values)                # what model(pixel_values, training=False) returns
    logits = infer.predict(pixel_values, batch_size=32)   # numpy in, numpy out, in batches
    infer = mv2.compile_for_inference(model, runtime="tflite")   # fixed-size inputs on CPU: faster

Two runtimes run the same folded graph (below):

- "tensorflow" (the default): one `tf.function` for every input size and batch; the graph the
  exported SavedModel holds, so TF Serving runs what you measured in-process.
- "tflite": the graph converted for each input shape (1-2 s, on first use; the 8 most recent
  shapes stay cached) and run by TFLite's XNNPACK kernels. On the 2-core CPU of
  benchmarks/RESULTS.md it is 2.3x / 1.7x / 1.2x faster than "tensorflow" at batch 1 (widths
  0.5 / 1.0 / 2.0), where TensorFlow's per-op overhead dominates, and within 10% either way at
  batch 8 and on the 512x512 segmenter. It is not the default because every new input shape
  pays a conversion: use it for latency when the input shape is fixed (a crop size, a batch).

With `fold_batchnorm=True` (the default) the model is not called at all: its weights are copied
once (as numpy arrays; the model is never modified, later changes to it are not seen) into a
separate TensorFlow graph of the same function. The model's own graph already folds its
BatchNorms into the convs, writes SiLU so grappler fuses it with conv + bias, and runs the
separable attention without per-patch keys (`keras_mobilevitv2/layers.py`); the copy adds:

- weights as graph constants: the BatchNorm folding is done once instead of on every call, and
  oneDNN's constant-filter convolutions are faster than its variable-filter ones (60 fused convs:
  25 vs 40 ms at width 1.0, batch 1, under the profiler);
- the GroupNorm(1) "layer norms" without their per-channel scale and shift, which are folded
  into the 1x1 convs that follow them (one full-size multiply-add fewer per norm);
- `sum_n softmax(q)_n = 1` taken as exact, so the attention's key bias is added as it is.

The result equals `model(x, training=False)` to float32 rounding (tests/test_inference.py holds
it to 1e-4 of the output's standard deviation); it is computed in float32 whatever the model's
dtype policy. With `fold_batchnorm=False` the callable is `tf.function(model(x, training=False))`
on the model itself, and follows later changes of its weights.
"""

import collections
import os
import threading
import warnings

import numpy as np
import tensorflow as tf

from keras_mobilevitv2 import layers as mv2_layers

JIT_COMPILE_CHOICES = ("auto", True, False)
RUNTIME_CHOICES = ("tensorflow", "tflite")


# ------------------------------------------------------------------------- weight snapshots
def _numpy(variable):
    return np.array(variable.numpy(), dtype=np.float32)  # a copy: the model is never touched


def _activation(name):
    """The inference form of an activation: SiLU as y * sigmoid(y), the pattern oneDNN fuses."""
    if name is None:
        return None
    if name in ("swish", "silu"):
        return lambda y: y * tf.sigmoid(y)
    if name == "relu":
        return tf.nn.relu
    return mv2_layers.ACTIVATIONS[name]


class _Conv:
    """A `ConvBN` with its BatchNorm folded: conv (explicit padding for stride 2) + bias + activation."""

    def __init__(self, layer, xla=False, scale=None, shift=None):
        """`scale`/`shift` (C_in,): a per-input-channel affine to fold in front (a GroupNorm's)."""
        kernel, bias = layer.folded_float32()  # the layer's own BatchNorm fold
        kernel = _numpy(kernel)  # (kh, kw, C_in, C_out) or depthwise (kh, kw, C, 1)
        out_channels = kernel.shape[2] if layer.depthwise else kernel.shape[3]
        bias = _numpy(bias) if bias is not None else np.zeros(out_channels, np.float32)
        if scale is not None:
            # conv(x * scale + shift) = conv_{kernel * scale}(x) + shift @ kernel: linear, so it
            # composes with the already folded BatchNorm.
            if layer.depthwise or layer.kernel_size != 1:
                raise ValueError("an input affine folds only into a 1x1 conv")
            bias = bias + shift @ kernel[0, 0]
            kernel = kernel * scale[None, None, :, None]
        self.depthwise = layer.depthwise
        self.strides = layer.strides
        self.dilation = layer.dilation_rate
        self.pad = layer._pad if layer.strides > 1 else 0
        self.activation = _activation(layer.activation)
        self.xla = xla
        if self.depthwise and self.pad and not xla:
            # As ConvBN._convolve: a zero row and column appended, "same" at stride 2, no padded copy.
            kernel = np.pad(kernel, [[0, 1], [0, 1], [0, 0], [0, 0]])
            self.pad = 0
        self.kernel = kernel.astype(np.float32)
        self.bias = bias.astype(np.float32)

    def __call__(self, x, residual=None):
        padding = "SAME"
        if self.pad:
            p = self.pad
            x = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])  # (B, H, W, C) -> (B, H+2p, W+2p, C)
            padding = "VALID"
        strides = [1, self.strides, self.strides, 1]
        dilations = [1, self.dilation, self.dilation, 1]
        if self.depthwise and self.xla:
            y = _depthwise_as_taps(x, self.kernel, self.strides, self.dilation, padding)
        elif self.depthwise:
            # The public op: without oneDNN (TF_ENABLE_ONEDNN_OPTS=0) the native kernel has no dilation.
            y = tf.nn.depthwise_conv2d(x, self.kernel, strides, padding, dilations=dilations[1:3])
        else:
            y = tf.nn.conv2d(x, self.kernel, strides, padding, dilations=dilations)
        y = tf.nn.bias_add(y, self.bias)
        if residual is not None:
            y = y + residual
        if self.activation is not None:
            y = self.activation(y)
        return y


def _depthwise_as_taps(x, kernel, strides, dilation, padding):
    """A depthwise conv as kh * kw shifted multiply-adds, which XLA fuses into one loop (XLA's own
    CPU depthwise convolution is ~60x slower than oneDNN's). Padding "SAME" (stride 1) or "VALID"."""
    kh, kw = kernel.shape[:2]
    if padding == "SAME":
        ph, pw = (kh - 1) // 2 * dilation, (kw - 1) // 2 * dilation
        x = tf.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
    shape = tf.shape(x)
    out_h = (shape[1] - dilation * (kh - 1) - 1) // strides + 1
    out_w = (shape[2] - dilation * (kw - 1) - 1) // strides + 1
    y = None
    for i in range(kh):
        for j in range(kw):
            tap = x[:, i * dilation : i * dilation + (out_h - 1) * strides + 1 : strides,
                    j * dilation : j * dilation + (out_w - 1) * strides + 1 : strides, :] * kernel[i, j, :, 0]
            y = tap if y is None else y + tap
    return y


class _InvertedResidual:
    def __init__(self, layer, xla):
        self.expand = _Conv(layer.expand_1x1, xla)
        self.depthwise = _Conv(layer.conv_3x3, xla)
        self.reduce = _Conv(layer.reduce_1x1, xla)
        self.use_residual = layer.use_residual

    def __call__(self, x):
        y = self.depthwise(self.expand(x))
        return self.reduce(y, residual=x if self.use_residual else None)


def _normalize(x, epsilon):
    """GroupNorm(1) without its affine: (x - mean) / sqrt(var + eps) over all but the batch axis."""
    axes = list(range(1, len(x.shape)))
    mean = tf.reduce_mean(x, axes, keepdims=True)
    variance = tf.reduce_mean(tf.math.squared_difference(x, mean), axes, keepdims=True)
    return (x - mean) * tf.math.rsqrt(variance + epsilon)


def _gamma_beta(norm):
    return _numpy(norm.gamma), _numpy(norm.beta)


class _TransformerLayer:
    """Pre-norm separable attention + FFN on (B, N, P, C); the norms' affines folded into the 1x1 convs."""

    def __init__(self, layer, xla):
        attention = layer.attention
        e = attention.embed_dim
        gamma, beta = _gamma_beta(layer.layernorm_before)
        qkv = attention.qkv_proj.convolution
        kernel, bias = _numpy(qkv.kernel)[0, 0], _numpy(qkv.bias)  # (C, 1 + 2C), (1 + 2C,)
        bias = bias + beta @ kernel  # fold the norm's shift, then its scale
        kernel = kernel * gamma[:, None]
        self.query_kernel, self.query_bias = kernel[:, :1].reshape(1, 1, e, 1), bias[:1]
        self.key_kernel, self.key_bias = kernel[:, 1 : 1 + e], bias[1 : 1 + e]  # (C, C), (C,)
        self.value_kernel, self.value_bias = kernel[:, 1 + e :].reshape(1, 1, e, e), bias[1 + e :]
        self.out_proj = _Conv(attention.out_proj, xla)
        self.eps_before = layer.layernorm_before.epsilon
        self.eps_after = layer.layernorm_after.epsilon
        gamma, beta = _gamma_beta(layer.layernorm_after)
        self.ffn_conv1 = _Conv(layer.ffn.conv1, xla, scale=gamma, shift=beta)
        self.ffn_conv2 = _Conv(layer.ffn.conv2, xla)

    def __call__(self, x):
        h = _normalize(x, self.eps_before)  # (B, N, P, C)
        query = tf.nn.bias_add(tf.nn.conv2d(h, self.query_kernel, 1, "VALID"), self.query_bias)  # (B, N, P, 1)
        scores = tf.nn.softmax(query, axis=1)  # over the N patches
        pooled = tf.reduce_sum(h * scores, axis=1)  # (B, P, C): sum_n s_n h_n
        context = tf.nn.bias_add(tf.einsum("bpc,cd->bpd", pooled, self.key_kernel), self.key_bias)  # (B, P, C)
        value = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(h, self.value_kernel, 1, "VALID"), self.value_bias))
        x = self.out_proj(value * context[:, None], residual=x)  # (B, N, P, C)
        h = _normalize(x, self.eps_after)
        return self.ffn_conv2(self.ffn_conv1(h), residual=x)


class _MobileViTV2Block:
    def __init__(self, layer, xla):
        self.layer = layer  # only for its hyper-parameters and `_resize_to_patch_multiple`
        self.downsample = None if layer.downsampling_layer is None else _InvertedResidual(layer.downsampling_layer, xla)
        self.conv_kxk = _Conv(layer.conv_kxk, xla)
        self.conv_1x1 = _Conv(layer.conv_1x1, xla)
        self.transformer = [_TransformerLayer(t, xla) for t in layer.transformer]
        self.eps = layer.layernorm.epsilon
        self.gamma, self.beta = _gamma_beta(layer.layernorm)
        self.conv_projection = _Conv(layer.conv_projection, xla)

    def __call__(self, x):
        layer = self.layer
        if self.downsample is not None:
            x = self.downsample(x)
        if layer.compat == "cvnets":
            x = layer._resize_to_patch_multiple(x)
        x = self.conv_1x1(self.conv_kxk(x))
        ph, pw = layer.patch_size
        shape = tf.shape(x)
        height, width = shape[1], shape[2]
        crop_h, crop_w = height // ph * ph, width // pw * pw
        if layer.compat == "transformers":
            x = x[:, :crop_h, :crop_w, :]  # unfold drops the remainder
        patches = mv2_layers.unfold_patches(x, ph, pw)  # (B, H, W, C) -> (B, N, P, C)
        for transformer in self.transformer:
            patches = transformer(patches)
        patches = _normalize(patches, self.eps) * self.gamma + self.beta
        x = mv2_layers.fold_patches(patches, crop_h, crop_w, ph, pw)  # (B, N, P, C) -> (B, H, W, C)
        if layer.compat == "transformers":
            x = tf.pad(x, [[0, 0], [0, height - crop_h], [0, width - crop_w], [0, 0]])
        return self.conv_projection(x)


class _Backbone:
    """The stem and five stages; returns the backbone's output dict."""

    def __init__(self, backbone, xla):
        from keras_mobilevitv2.backbone import STAGE_LAYER_NAMES

        self.stem = _Conv(backbone.get_layer("conv_stem"), xla)
        self.stages = []
        for name in STAGE_LAYER_NAMES:
            stage = backbone.get_layer(name)
            if isinstance(stage, mv2_layers.MobileNetStage):
                blocks = [_InvertedResidual(block, xla) for block in stage.blocks]
                self.stages.append(blocks)
            else:
                self.stages.append([_MobileViTV2Block(stage, xla)])
        self.expand_output = backbone.expand_output

    def __call__(self, x):
        x = self.stem(x)
        hidden_states = []
        for blocks in self.stages:
            for block in blocks:
                x = block(x)
            hidden_states.append(x)
        outputs = {"last_hidden_state": x, "hidden_states": tuple(hidden_states)}
        if self.expand_output:
            outputs["pooler_output"] = tf.reduce_mean(x, axis=[1, 2])
        return outputs


class _Classifier:
    def __init__(self, model, xla):
        self.backbone = _Backbone(model.backbone, xla)
        dense = model.get_layer("classifier")
        self.kernel, self.bias = _numpy(dense.kernel), _numpy(dense.bias)

    def __call__(self, x):
        pooled = self.backbone(x)["pooler_output"]
        return tf.nn.bias_add(tf.matmul(pooled, self.kernel), self.bias)


class _DeepLabV3:
    """Backbone -> ASPP (five branches, concat, 1x1 project) -> 1x1 classifier; dropouts are identities."""

    def __init__(self, model, xla):
        self.backbone = _Backbone(model.backbone, xla)
        head = model.get_layer("segmentation_head")
        aspp = head.aspp
        self.branches = [_Conv(conv, xla) for conv in aspp.convs[:4]]
        self.pooling = _Conv(aspp.convs[4].conv_1x1, xla)
        self.project = _Conv(aspp.project, xla)
        self.classifier = _Conv(head.classifier, xla)

    def __call__(self, x):
        features = self.backbone(x)["last_hidden_state"]  # (B, h, w, C)
        shape = tf.shape(features)
        pooled = self.pooling(tf.reduce_mean(features, axis=[1, 2], keepdims=True))  # (B, 1, 1, F)
        pooled = tf.broadcast_to(pooled, tf.concat([shape[:3], tf.shape(pooled)[3:]], axis=0))
        pyramid = tf.concat([branch(features) for branch in self.branches] + [pooled], axis=-1)
        return self.classifier(self.project(pyramid))


def fused_graph(model, xla=False):
    """The folded, pure-TF twin of `model` (a classifier, segmenter or backbone): a callable on tf tensors.

    `xla`: write depthwise convs as shifted multiply-adds, for a function XLA compiles."""
    from keras_mobilevitv2.task import model_task

    try:
        task = model_task(model)
    except ValueError:
        raise TypeError(
            "fold_batchnorm=True needs a MobileViTV2Backbone, MobileViTV2ImageClassifier or "
            f"MobileViTV2SemanticSegmenter, received {type(model).__name__}; pass fold_batchnorm=False"
        ) from None
    graphs = {"semantic_segmentation": _DeepLabV3, "image_classification": _Classifier, "backbone": _Backbone}
    return graphs[task](model, xla)


def _resolve_jit_compile(jit_compile):
    if jit_compile not in JIT_COMPILE_CHOICES:
        raise ValueError(f"jit_compile must be one of {JIT_COMPILE_CHOICES}, received {jit_compile!r}")
    if jit_compile == "auto":
        # On CPU XLA is no faster overall (benchmarks/RESULTS.md): its depthwise convolution is
        # 60x slower than oneDNN's (hence `_depthwise_as_taps`), and it compiles once per input
        # shape. On a GPU XLA is the usual choice (not measured in this repository).
        return bool(tf.config.list_logical_devices("GPU"))
    return jit_compile


class TFLiteRuntime:
    """The folded graph run by TFLite's XNNPACK CPU kernels: one converted model per input shape.

    A call with a new (B, H, W, C) converts the graph for that shape (1-2 s at width 0.5-1.0, the
    weights are already constants) and keeps its interpreter; the `max_shapes` most recently used
    shapes stay cached. Calls are serialized per shape (a TFLite interpreter is not thread-safe).
    """

    def __init__(self, graph, num_threads=None, max_shapes=8):
        if num_threads is not None and (not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1):
            raise ValueError(f"num_threads must be a positive int or None, received {num_threads!r}")
        if not isinstance(max_shapes, int) or isinstance(max_shapes, bool) or max_shapes < 1:
            raise ValueError(f"max_shapes must be a positive int, received {max_shapes!r}")
        self._graph = graph
        self.num_threads = num_threads or os.cpu_count() or 1
        self.max_shapes = max_shapes
        self._cache = collections.OrderedDict()  # shape -> (interpreter runner, output structure, lock)
        self._cache_lock = threading.Lock()

    @property
    def shapes(self):
        """The input shapes with a converted model, least recently used first."""
        with self._cache_lock:
            return list(self._cache)

    def _convert(self, shape):
        structure = []

        @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="pixel_values")])
        def flat(pixel_values):
            outputs = self._graph(pixel_values)
            structure.append(outputs)
            # Names that sort in the order of tf.nest.flatten.
            return {f"output_{i:03d}": t for i, t in enumerate(tf.nest.flatten(outputs))}

        module = tf.Module()
        module.flat = flat
        converter = tf.lite.TFLiteConverter.from_concrete_functions([flat.get_concrete_function()], module)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        flatbuffer = converter.convert()
        with warnings.catch_warnings():
            # tf.lite.Interpreter warns that it moves to the ai_edge_litert package; same runtime.
            warnings.simplefilter("ignore")
            interpreter = tf.lite.Interpreter(model_content=flatbuffer, num_threads=self.num_threads)
        runner = interpreter.get_signature_runner()
        return runner, structure[0], threading.Lock()

    def _entry(self, shape):
        with self._cache_lock:
            entry = self._cache.get(shape)
            if entry is not None:
                self._cache.move_to_end(shape)
                return entry
        entry = self._convert(shape)  # outside the lock: other shapes keep running
        with self._cache_lock:
            entry = self._cache.setdefault(shape, entry)
            self._cache.move_to_end(shape)
            while len(self._cache) > self.max_shapes:
                self._cache.popitem(last=False)
        return entry

    def __call__(self, pixel_values):
        """numpy float32 (B, H, W, C) -> the model's output structure of numpy arrays."""
        pixel_values = np.ascontiguousarray(pixel_values, np.float32)
        runner, structure, lock = self._entry(tuple(pixel_values.shape))
        with lock:
            outputs = runner(pixel_values=pixel_values)
            flat = [np.array(outputs[name]) for name in sorted(outputs)]  # copies: buffers are reused
        return tf.nest.pack_sequence_as(structure, flat)


class InferenceFunction:
    """What `compile_for_inference` returns: call it on (B, H, W, C) float32 pixels.

    Attributes:
        runtime: "tensorflow" (a `tf.function`) or "tflite" (`TFLiteRuntime`, XNNPACK kernels).
        function: the underlying `tf.function` (runtime "tensorflow"): one trace for every input
            size and batch, or with XLA one trace and compilation per input shape. None for TFLite.
        tflite: the `TFLiteRuntime` (runtime "tflite"), else None.
        jit_compile: whether XLA compiles it.
        fold_batchnorm: whether it runs the folded graph (True) or the model itself (False).
    """

    def __init__(self, model, jit_compile="auto", fold_batchnorm=True, runtime="tensorflow", num_threads=None):
        if runtime not in RUNTIME_CHOICES:
            raise ValueError(f"runtime must be one of {RUNTIME_CHOICES}, received {runtime!r}")
        self.runtime = runtime
        self.fold_batchnorm = bool(fold_batchnorm)
        self.function = self.tflite = None
        channels = model.inputs[0].shape[-1]
        if runtime == "tflite":
            if jit_compile is True:
                raise ValueError("jit_compile=True applies to runtime='tensorflow' only")
            if not self.fold_batchnorm:
                raise ValueError("runtime='tflite' converts the folded graph: it needs fold_batchnorm=True")
            self.jit_compile = False
            self.tflite = TFLiteRuntime(fused_graph(model), num_threads=num_threads)
            return
        if num_threads is not None:
            raise ValueError("num_threads applies to runtime='tflite' only (TensorFlow's are set with tf.config.threading)")
        self.jit_compile = _resolve_jit_compile(jit_compile)
        if self.fold_batchnorm:
            forward = fused_graph(model, xla=self.jit_compile)
        else:
            forward = lambda x: model(x, training=False)  # noqa: E731
        if self.jit_compile:
            # XLA compiles one program per input shape anyway; traced per shape, the shapes are static
            # (a dynamic-shape trace has reshapes XLA cannot compile).
            self.function = tf.function(forward, jit_compile=True)
        else:
            spec = tf.TensorSpec([None, None, None, channels], tf.float32, name="pixel_values")
            self.function = tf.function(forward, input_signature=[spec])

    def __call__(self, pixel_values):
        if self.tflite is not None:
            outputs = self.tflite(np.asarray(pixel_values, np.float32))
            return tf.nest.map_structure(tf.convert_to_tensor, outputs)
        return self.function(tf.convert_to_tensor(pixel_values, tf.float32))

    def predict(self, pixel_values, batch_size=32):
        """numpy (N, H, W, C) in, numpy out (the model's output structure), `batch_size` images per call."""
        pixel_values = np.asarray(pixel_values, np.float32)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, received {batch_size!r}")
        if len(pixel_values) == 0:
            raise ValueError("predict needs at least one image")
        run = self.tflite if self.tflite is not None else lambda x: tf.nest.map_structure(lambda t: t.numpy(), self(x))
        outputs = [run(pixel_values[start : start + batch_size]) for start in range(0, len(pixel_values), batch_size)]
        return tf.nest.map_structure(lambda *parts: np.concatenate(parts, axis=0), *outputs)


def compile_for_inference(model, jit_compile="auto", fold_batchnorm=True, runtime="tensorflow", num_threads=None):
    """The fastest in-process inference callable of `model`; see the module docstring.

    Args:
        model: a `MobileViTV2ImageClassifier`, `MobileViTV2SemanticSegmenter` or
            `MobileViTV2Backbone` (any Keras model with `fold_batchnorm=False`).
        jit_compile: compile with XLA: True, False, or "auto" (XLA only when a GPU is visible;
            on CPU oneDNN's kernels are much faster than XLA's).
        fold_batchnorm: run a folded copy of the weights (fast, a snapshot) rather than the model.
        runtime: "tensorflow" (one graph for every input shape; what the SavedModel runs) or
            "tflite" (the folded graph converted per input shape and run by TFLite's XNNPACK
            kernels: on CPU up to 2.3x faster at batch 1, about even at batch 8, see
            benchmarks/RESULTS.md; the first call with a new shape converts, 1-2 s). For
            fixed-size, small-batch inputs on CPU, "tflite" is the fastest.
        num_threads: threads of the TFLite interpreter (default: one per core).

    Returns:
        An `InferenceFunction`: `f(pixel_values)` takes NHWC float32 pixels of any size and batch
        and returns what `model(pixel_values, training=False)` returns (tf tensors);
        `f.predict(array, batch_size)` the same as numpy, in batches.
    """
    return InferenceFunction(
        model, jit_compile=jit_compile, fold_batchnorm=fold_batchnorm, runtime=runtime, num_threads=num_threads
    )
