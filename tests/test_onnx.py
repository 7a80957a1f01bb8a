"""ONNX export: onnxruntime against the Keras model at two sizes and batches in one session.

Width-0.5 models with every weight and BatchNorm statistic randomized. The segmenter runs at output
stride 8, so both the ASPP (rates 6 / 12 / 18) and stage 4-5 are dilated; 72 x 104 is not a multiple
of the patch size at stage 3 (the ml-cvnets resize to the next multiple is in the graph). Each
conversion takes 20-30 s on 2 busy cores: those tests are slow.
"""

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

from keras_mobilevitv2.backbone import MobileViTV2Backbone  # noqa: E402
from keras_mobilevitv2.cli import main  # noqa: E402
from keras_mobilevitv2.config import MobileViTV2Config  # noqa: E402
from keras_mobilevitv2.image_classifier import MobileViTV2ImageClassifier  # noqa: E402
from keras_mobilevitv2.onnx_export import (  # noqa: E402
    PREPROCESSOR_FILE,
    explicit_dilated_padding,
    export_onnx,
    keras_outputs,
    onnx_session,
)
from keras_mobilevitv2.outputs import OutputExistsError  # noqa: E402
from keras_mobilevitv2.preprocessing import PreprocessingConfig  # noqa: E402
from keras_mobilevitv2.segmenter import MobileViTV2SemanticSegmenter  # noqa: E402
from tests.conftest import max_rel_error, randomize_keras_model  # noqa: E402

TOLERANCE = 1e-4  # max abs error / std of the Keras output
SHAPES = [(1, 64, 64, 3), (3, 72, 104, 3)]  # two batches and sizes, one session


def assert_matches_keras(model, path):
    """Every output at every shape of SHAPES, one session; returns the worst error."""
    session = onnx_session(path)
    (spec,) = session.get_inputs()
    assert spec.name == "pixel_values" and spec.shape == ["batch", "height", "width", 3]
    names = [o.name for o in session.get_outputs()]
    worst = 0.0
    for i, shape in enumerate(SHAPES):
        x = np.random.default_rng(i).uniform(0, 1, shape).astype(np.float32)
        actual = dict(zip(names, session.run(None, {"pixel_values": x})))
        expected = keras_outputs(model, x)
        assert sorted(actual) == sorted(expected)
        for name, value in expected.items():
            assert actual[name].shape == value.shape, (name, shape)
            error = max_rel_error(actual[name], value)
            print(f"{type(model).__name__} {name} {shape}: max abs error / std {error:.2e}")
            assert error <= TOLERANCE, (name, shape, error)
            worst = max(worst, error)
    return worst


@pytest.fixture(scope="module")
def segmenter():
    config = MobileViTV2Config(width_multiplier=0.5, num_labels=5, output_stride=8, aspp_out_channels=32)
    return randomize_keras_model(MobileViTV2SemanticSegmenter(config), seed=4)


@pytest.mark.slow
def test_classifier_cli_export_runs_in_onnxruntime_at_any_batch_and_size(tmp_path, capsys):
    preprocessing = PreprocessingConfig(shortest_edge=80, crop_height=64, crop_width=64)
    model = MobileViTV2ImageClassifier(MobileViTV2Config(width_multiplier=0.5, num_labels=10), preprocessing=preprocessing)
    randomize_keras_model(model, seed=3)
    model.save(tmp_path / "tiny.keras")
    argv = ["export", str(tmp_path / "tiny.keras"), "--format", "onnx", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    path = tmp_path / "out" / "tiny.onnx"
    assert f"wrote {path}" in capsys.readouterr().out
    assert assert_matches_keras(model, path) <= TOLERANCE
    # The preprocessing the inputs need, beside the file and in its metadata.
    written = json.loads((tmp_path / "out" / PREPROCESSOR_FILE).read_text())
    assert written == preprocessing.to_hf_dict()
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(metadata["preprocessor_config"]) == written
    # An existing file is not replaced without --overwrite.
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.slow
def test_dilated_segmenter_runs_in_onnxruntime_at_any_batch_and_size(segmenter, tmp_path):
    path = export_onnx(segmenter, tmp_path / "segmenter.onnx")
    convs = [n for n in onnx.load(path).graph.node if n.op_type == "Conv"]
    dilated = [n for n in convs if any(a.name == "dilations" and max(a.ints) > 1 for a in n.attribute)]
    assert len(dilated) >= 3  # the ASPP's three rates at least
    assert not [n.name for n in dilated if any(a.name == "auto_pad" for a in n.attribute)]
    assert assert_matches_keras(segmenter, path) <= TOLERANCE
    # A segmenter's preprocessing never crops, as its SavedModel's.
    assert json.loads((tmp_path / PREPROCESSOR_FILE).read_text())["do_center_crop"] is False


@pytest.mark.slow
def test_backbone_exports_every_stage(tmp_path):
    backbone = randomize_keras_model(MobileViTV2Backbone(MobileViTV2Config(width_multiplier=0.5)), seed=5)
    path = export_onnx(backbone, tmp_path / "backbone.onnx")
    names = {o.name for o in onnx_session(path).get_outputs()}
    assert names == {"last_hidden_state", "pooler_output"} | {f"hidden_states_{i}" for i in range(5)}
    assert assert_matches_keras(backbone, path) <= TOLERANCE


def conv_graph(auto_pad, dilation, strides=(1, 1)):
    """One 3x3 Conv (NCHW), dilated, `auto_pad` SAME_UPPER as tf2onnx writes it; free H and W."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    node = onnx.helper.make_node(
        "Conv", ["x", "w"], ["y"], auto_pad=auto_pad, dilations=[dilation, dilation], strides=list(strides)
    )
    graph = onnx.helper.make_graph(
        [node], "conv",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, "h", "w"])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(weight, "w")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, weight


def run_proto(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("size", [(9, 13), (20, 7)])
def test_explicit_padding_equals_tensorflow_same_dilated_conv(size):
    import tensorflow as tf

    model, weight = conv_graph("SAME_UPPER", dilation=3)
    x = np.random.default_rng(1).standard_normal((1, 3, *size)).astype(np.float32)
    with pytest.raises(Exception, match="Dilation not supported for AutoPad"):
        run_proto(model, x)  # what onnxruntime does with tf2onnx's graph as written
    assert explicit_dilated_padding(model.graph) == 1
    expected = tf.nn.conv2d(
        x.transpose(0, 2, 3, 1), weight.transpose(2, 3, 1, 0), strides=1, padding="SAME", dilations=3
    ).numpy().transpose(0, 3, 1, 2)
    actual = run_proto(model, x)
    assert actual.shape == expected.shape == (1, 4, *size)
    np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_strided_dilated_same_conv_is_refused():
    from keras_mobilevitv2.onnx_export import ONNXExportError

    model, _ = conv_graph("SAME_UPPER", dilation=2, strides=(2, 2))
    with pytest.raises(ONNXExportError, match="depends on the input size"):
        explicit_dilated_padding(model.graph)


def test_existing_outputs_are_refused_before_converting(segmenter, tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"keep")
    with pytest.raises(OutputExistsError, match="m.onnx exists"):
        export_onnx(segmenter, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == b"keep"
    (tmp_path / PREPROCESSOR_FILE).write_text("{}")
    with pytest.raises(OutputExistsError, match="other preprocessing"):
        export_onnx(segmenter, tmp_path / "other.onnx")
    assert not (tmp_path / "other.onnx").exists()
    with pytest.raises(ValueError, match="must end in .onnx"):
        export_onnx(segmenter, tmp_path / "model.pb")


def test_export_onnx_rejects_other_models(tmp_path):
    import keras

    with pytest.raises(TypeError, match="received Sequential"):
        export_onnx(keras.Sequential([keras.layers.Dense(2)]), tmp_path / "m.onnx")
