"""ONNX export: the BatchNorm-folded graph of `compile_for_inference`, free batch and image size.

    from keras_mobilevitv2.onnx_export import export_onnx
    export_onnx(model, "out/model.onnx")      # + out/preprocessor_config.json

    import onnxruntime
    session = onnxruntime.InferenceSession("out/model.onnx")
    logits = session.run(["logits"], {"pixel_values": pixel_values})[0]

The ONNX model takes `pixel_values`, float32 (batch, height, width, 3): NHWC, already
preprocessed (what `preprocess_image` returns, batched; the steps are in `preprocessor_config.json`
beside the file and in the model's `preprocessor_config` metadata). Batch, height and width are
free. Outputs, float32:

- classifier: `logits` (batch, num_labels);
- segmenter: `logits` (batch, h, w, num_labels) at the output stride (h = height / output_stride;
  resize them to the image and take the argmax for a label map);
- backbone: `last_hidden_state`, `hidden_states_0` .. `hidden_states_4` (the five stages) and,
  with `expand_output`, `pooler_output`.

Converted by tf2onnx (the optional extra `[onnx]`) from the same TensorFlow graph the SavedModel
runs (`compile_for_inference(model, jit_compile=False).function`), so the numbers are the
SavedModel's. tf2onnx writes a dilated SAME convolution (the ASPP's rates 6 / 12 / 18, and dilated
stages at output stride 8 / 16) with `auto_pad`, which onnxruntime refuses with a dilation; at
stride 1 that padding does not depend on the input size (dilation * (kernel - 1) in total per
axis), so those convolutions are rewritten with explicit `pads`: the same numbers, any size.
"""

import json
import os

from keras_mobilevitv2.extras import require

ONNX_OPSET = 17
INPUT_NAME = "pixel_values"
DYNAMIC_INPUT_DIMS = ("batch", "height", "width")
PREPROCESSOR_FILE = "preprocessor_config.json"
ONNX_DOMAINS = ("", "ai.onnx")  # standard operators; anything else would be a TF op left unconverted


class ONNXExportError(ValueError):
    """The conversion produced a graph onnxruntime cannot run as it is (the message says why)."""


def _task(model):
    from keras_mobilevitv2.tasks import task_of

    try:
        return task_of(model)
    except ValueError:
        raise TypeError(
            "export_onnx needs a MobileViTV2ImageClassifier, MobileViTV2SemanticSegmenter or MobileViTV2Backbone, "
            f"received {type(model).__name__}"
        ) from None


def onnx_preprocessing(model, preprocessing=None):
    """The `PreprocessingConfig` written beside the file: the SavedModel's (`export.resolve_preprocessing`);
    for a backbone, `preprocessing` or its task class's default (the ImageNet preset's)."""
    from keras_mobilevitv2 import export
    from keras_mobilevitv2.preprocessing import PreprocessingConfig

    if _task(model) != "backbone":
        return export.resolve_preprocessing(model, preprocessing)
    if preprocessing is None:
        return PreprocessingConfig.from_preset(type(model).default_preprocessing_preset)
    if isinstance(preprocessing, dict):
        return PreprocessingConfig.from_dict(preprocessing)
    if not isinstance(preprocessing, PreprocessingConfig):
        raise TypeError(f"preprocessing must be a PreprocessingConfig, received {type(preprocessing).__name__}")
    return preprocessing


def _named_outputs(task, outputs):
    """The fused graph's outputs as a flat {ONNX output name: tensor} (tf2onnx names a dict's outputs by key)."""
    if task != "backbone":
        return {"logits": outputs}
    named = {"last_hidden_state": outputs["last_hidden_state"]}
    named.update({f"hidden_states_{i}": t for i, t in enumerate(outputs["hidden_states"])})
    if "pooler_output" in outputs:
        named["pooler_output"] = outputs["pooler_output"]
    return named


def onnx_output_names(model):
    """The ONNX outputs of `export_onnx(model)`, in order."""
    task = _task(model)
    if task != "backbone":
        return ["logits"]
    names = ["last_hidden_state"] + [f"hidden_states_{i}" for i in range(5)]
    return names + (["pooler_output"] if model.expand_output else [])


def keras_outputs(model, pixel_values):
    """`model(pixel_values)` as {ONNX output name: numpy}: what the ONNX file's outputs should equal."""
    outputs = model(pixel_values, training=False)
    return {name: _to_numpy(t) for name, t in _named_outputs(_task(model), outputs).items()}


def _to_numpy(tensor):
    import numpy as np

    return np.asarray(tensor, np.float32)


def explicit_dilated_padding(graph):
    """Rewrite every `Conv` with `auto_pad` SAME_UPPER / SAME_LOWER and a dilation > 1 to explicit
    `pads` (in place; onnxruntime runs no dilated auto_pad). Returns how many were rewritten.

    At stride 1, SAME pads dilation * (kernel - 1) per axis, the extra one at the end (SAME_UPPER,
    TensorFlow's) or the start (SAME_LOWER), whatever the input size. A strided dilated SAME conv
    (its padding depends on the size) raises `ONNXExportError`.
    """
    import onnx

    kernel_shapes = {init.name: list(init.dims) for init in graph.initializer}
    rewritten = 0
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        attributes = {a.name: a for a in node.attribute}
        auto_pad = attributes.get("auto_pad")
        mode = auto_pad.s.decode() if auto_pad is not None else "NOTSET"
        dilations = list(attributes["dilations"].ints) if "dilations" in attributes else []
        if mode not in ("SAME_UPPER", "SAME_LOWER") or all(d == 1 for d in dilations):
            continue
        strides = list(attributes["strides"].ints) if "strides" in attributes else [1] * len(dilations)
        if "kernel_shape" in attributes:
            kernel = list(attributes["kernel_shape"].ints)
        elif node.input[1] in kernel_shapes:
            kernel = kernel_shapes[node.input[1]][2:]  # (out, in / groups, kh, kw)
        else:
            raise ONNXExportError(f"Conv {node.name!r}: dilated auto_pad with a kernel of unknown shape")
        if any(s != 1 for s in strides):
            raise ONNXExportError(
                f"Conv {node.name!r}: dilation {dilations} with stride {strides} and auto_pad {mode}: "
                "its padding depends on the input size"
            )
        totals = [d * (k - 1) for d, k in zip(dilations, kernel)]
        small = [t // 2 for t in totals]
        large = [t - s for t, s in zip(totals, small)]
        begin, end = (small, large) if mode == "SAME_UPPER" else (large, small)
        node.attribute.remove(auto_pad)
        if "pads" in attributes:
            node.attribute.remove(attributes["pads"])
        node.attribute.append(onnx.helper.make_attribute("pads", begin + end))
        rewritten += 1
    return rewritten


def _name_dynamic_dims(graph):
    """Name the free dims (tf2onnx writes unk__N): the input's batch / height / width, each output's
    first dim batch and a feature map's `<output>_height` / `<output>_width`."""
    for dim, name in zip(graph.input[0].type.tensor_type.shape.dim, DYNAMIC_INPUT_DIMS):
        if not dim.HasField("dim_value"):
            dim.dim_param = name
    for output in graph.output:
        dims = output.type.tensor_type.shape.dim
        names = ["batch", f"{output.name}_height", f"{output.name}_width"] if len(dims) == 4 else ["batch"]
        for dim, name in zip(dims, names):
            if not dim.HasField("dim_value"):
                dim.dim_param = name


def _check_standard_ops(graph):
    foreign = sorted({f"{n.domain}:{n.op_type}" for n in graph.node if n.domain not in ONNX_DOMAINS})
    if foreign:
        raise ONNXExportError(f"tf2onnx left ops it could not convert: {', '.join(foreign)}")


def to_onnx(model, preprocessing=None, opset=ONNX_OPSET):
    """The `onnx.ModelProto` of `model` (see the module docstring); `preprocessing` goes into its
    `preprocessor_config` metadata (default: `onnx_preprocessing(model)`)."""
    what = "ONNX export"
    tf2onnx = require("tf2onnx", f"{what} needs tf2onnx", "onnx")
    require("onnx", f"{what} needs onnx", "onnx")
    import tensorflow as tf

    from keras_mobilevitv2.inference import compile_for_inference

    task = _task(model)
    if not isinstance(opset, int) or isinstance(opset, bool) or opset < 13:
        raise ValueError(f"opset must be an int of at least 13, received {opset!r}")
    config = onnx_preprocessing(model, preprocessing)
    infer = compile_for_inference(model, jit_compile=False).function
    spec = tf.TensorSpec([None, None, None, 3], tf.float32, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def forward(pixel_values):
        outputs = tf.nest.map_structure(lambda t: tf.cast(t, tf.float32), infer(pixel_values))
        return _named_outputs(task, outputs)

    proto, _ = tf2onnx.convert.from_function(forward, input_signature=[spec], opset=opset)
    graph = proto.graph
    _check_standard_ops(graph)
    explicit_dilated_padding(graph)
    _name_dynamic_dims(graph)
    got = [o.name for o in graph.output]
    if sorted(got) != sorted(onnx_output_names(model)) or [i.name for i in graph.input] != [INPUT_NAME]:
        raise ONNXExportError(f"unexpected ONNX graph inputs {[i.name for i in graph.input]} / outputs {got}")
    proto.doc_string = f"MobileViTV2 {type(model).__name__} ({task}): {INPUT_NAME} NHWC float32, preprocessed"
    entry = proto.metadata_props.add()
    entry.key, entry.value = "preprocessor_config", json.dumps(config.to_hf_dict())
    import onnx

    onnx.checker.check_model(proto)
    return proto


def export_onnx(model, path, preprocessing=None, opset=ONNX_OPSET, overwrite=False):
    """Write `model` as an ONNX file at `path` and `preprocessor_config.json` beside it.

    Args:
        model: a `MobileViTV2ImageClassifier`, `MobileViTV2SemanticSegmenter` or `MobileViTV2Backbone`.
        path: the `.onnx` file.
        preprocessing: the `PreprocessingConfig` the inputs need (written beside the file, not run
            by the ONNX graph); default `model.preprocessing`, else the task's preset default
            (a segmenter's without centre crop, as its SavedModel).
        opset: the ONNX opset (default `ONNX_OPSET`).
        overwrite: replace an existing file (otherwise `OutputExistsError`). The file is written
            beside `path` and renamed into place. An existing `preprocessor_config.json` with the
            same content is kept (several exports of one model may share a directory); a
            different one is replaced only with `overwrite`.

    Returns the path. Needs the extra `[onnx]` (tf2onnx, onnx; onnxruntime to run the file).
    """
    from keras_mobilevitv2.outputs import OutputExistsError, atomic_file, check_can_write

    path = os.fspath(path)
    if not path.endswith(".onnx"):
        raise ValueError(f"path must end in .onnx, received {path!r}")
    config_path = os.path.join(os.path.dirname(os.path.abspath(path)), PREPROCESSOR_FILE)
    check_can_write([path], overwrite)
    config_text = json.dumps(onnx_preprocessing(model, preprocessing).to_hf_dict(), indent=2) + "\n"
    keep_config = _same_text(config_path, config_text)
    if not keep_config and not overwrite and os.path.lexists(config_path):
        raise OutputExistsError(
            f"{config_path} exists with other preprocessing; pass --overwrite (overwrite=True) to replace it, "
            "or write to another directory"
        )
    data = to_onnx(model, preprocessing, opset).SerializeToString()
    with atomic_file(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    if not keep_config:
        with atomic_file(config_path) as tmp:
            tmp.write_text(config_text, encoding="utf-8")
    return path


def _same_text(path, text):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read() == text
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError):
        return False


def onnx_session(path, num_threads=None):
    """An onnxruntime `InferenceSession` of `path` on the CPU (`num_threads` intra-op threads)."""
    ort = require("onnxruntime", "running an ONNX file needs onnxruntime", "onnx")
    options = ort.SessionOptions()
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
