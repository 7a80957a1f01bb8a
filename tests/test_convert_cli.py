"""`mobilevitv2 convert`: the files it writes, its parity report, its errors; and the cost of conversion."""

import json
import os
import subprocess
import sys
import tracemalloc

import keras
import numpy as np
import pytest

from conversion.convert import build_model, convert_checkpoint
from conversion.hf import load_hf_state_dict
from conversion.report import patch_cvnets_dilation, reference_model
from conversion.sources import load_as_hf
from keras_mobilevitv2.cli import main
from keras_mobilevitv2.config import MobileViTV2Config
from keras_mobilevitv2.preprocessing import PreprocessingConfig
from tests.conftest import max_rel_error, randomize_torch_module
from tests.cvnets_reference import cvnets_state_dict

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LABELS = {0: "tench", 1: "goldfish", 2: "shark", 3: "hen"}


def _hf_classifier_dir(path, width=0.5, seed=0, crop=64):
    """A transformers classifier directory with labels and a preprocessor_config.json, as on the hub."""
    config = transformers.MobileViTV2Config(
        width_multiplier=width, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}
    )
    model = randomize_torch_module(transformers.MobileViTV2ForImageClassification(config).eval(), seed)
    model.save_pretrained(path)
    processor = {
        "image_processor_type": "MobileViTImageProcessor",
        "size": {"shortest_edge": crop + 8},
        "crop_size": {"height": crop, "width": crop},
        "resample": 2,
    }
    (path / "preprocessor_config.json").write_text(json.dumps(processor))
    return model


def _run(argv, capsys):
    code = main(["convert", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_hf_directory_to_keras(tmp_path, capsys):
    hf = _hf_classifier_dir(tmp_path / "hf")
    out = tmp_path / "keras"
    code, stdout, err = _run([tmp_path / "hf", "--out", out], capsys)
    assert code == 0, err
    assert "hf checkpoint" in stdout and "config from config.json" in stdout  # what was detected
    assert "preprocessing from preprocessor_config.json" in stdout

    model = keras.saving.load_model(out / "model.keras")
    assert model.config.id2label == LABELS
    assert model.preprocessing == PreprocessingConfig(shortest_edge=72, crop_height=64, crop_width=64)
    twin = build_model(model.config, "image_classification")
    twin.load_weights(out / "model.weights.h5")
    x = np.random.RandomState(0).rand(1, 64, 128, 3).astype("float32")
    np.testing.assert_array_equal(twin(x), model(x))
    with torch.no_grad():
        expected = hf(torch.from_numpy(x.transpose(0, 3, 1, 2))).logits.numpy()
    assert max_rel_error(model(x), expected) <= 1e-4

    report = json.loads((out / "conversion_report.json").read_text())
    assert report["source_format"] == "hf" and report["passed"]
    assert report["input"]["shape_nhwc"] == [1, 64, 64, 3]  # the preprocessing crop
    assert report["reference_patches"] == []
    assert report["outputs"]["logits"]["max_abs_diff_over_std"] <= 1e-4
    assert "PASS" in stdout
    assert report["conversion"]["preprocessing_origin"].startswith("preprocessing from preprocessor_config.json")
    assert report["conversion"]["preprocessing"]["crop_height"] == 64
    assert any("config from config.json" in note for note in report["conversion_notes"])


def test_cvnets_deeplabv3_report_patches_the_reference(fixtures_dir, tmp_path, capsys):
    out = tmp_path / "keras"
    code, stdout, err = _run([fixtures_dir / "cvnets_mobilevitv2_050_deeplabv3.pt", "--out", out], capsys)
    assert code == 0, err
    assert "cvnets checkpoint" in stdout and "output_stride 16" in stdout  # inferred, and said so
    report = json.loads((out / "conversion_report.json").read_text())
    assert report["reference_patches"] == ["mobilevitv2.encoder.layer.4.conv_kxk: dilation 2, padding 2"]
    # The check runs at the crop of the preprocessing the model carries: Apple's VOC 512 (assumed, and said so).
    assert report["passed"] and report["input"]["shape_nhwc"] == [1, 512, 512, 3]
    assert any("aux_head" in note for note in report["conversion_notes"])
    assert any("preprocessing assumed" in note for note in report["conversion_notes"])


def test_report_reference_reproduces_ml_cvnets(fixtures_dir):
    """The patched transformers reference equals what ml-cvnets computed (the fixture's outputs)."""
    io = np.load(fixtures_dir / "cvnets_mobilevitv2_050_deeplabv3_io.npz")
    hf_state_dict, config, task, _, _ = load_as_hf(fixtures_dir / "cvnets_mobilevitv2_050_deeplabv3.pt")
    config = MobileViTV2Config.from_dict(config)
    reference = reference_model(config, task, hf_state_dict)
    x = torch.from_numpy(io["pixel_values_nchw"])
    with torch.no_grad():
        stock = reference(x, output_hidden_states=True)
    assert max_rel_error(stock.hidden_states[4].numpy(), io["encoder_out_l5"]) > 1e-2
    patch_cvnets_dilation(reference, config)
    with torch.no_grad():
        patched = reference(x, output_hidden_states=True)
    assert max_rel_error(patched.hidden_states[4].numpy(), io["encoder_out_l5"]) <= 1e-4
    assert max_rel_error(patched.logits.numpy(), io["logits_head_raw"]) <= 1e-4


def test_compat_transformers_report_says_the_original_differs(tmp_path, capsys):
    hf = transformers.MobileViTV2ForSemanticSegmentation(
        transformers.MobileViTV2Config(width_multiplier=0.5, num_labels=3, aspp_out_channels=32, output_stride=16)
    )
    torch.save(cvnets_state_dict(randomize_torch_module(hf.eval(), 1)), tmp_path / "seg.pt")
    out = tmp_path / "keras"
    code, stdout, err = _run([tmp_path / "seg.pt", "--out", out, "--compat", "transformers"], capsys)
    assert code == 0, err
    report = json.loads((out / "conversion_report.json").read_text())
    assert report["compat"] == "transformers" and report["passed"] and report["reference_patches"] == []
    assert any("does not dilate" in note for note in report["notes"])


def test_keras_back_to_transformers(tmp_path, capsys):
    _hf_classifier_dir(tmp_path / "hf", seed=2)
    code, _, err = _run([tmp_path / "hf", "--out", tmp_path / "keras", "--no-report"], capsys)
    assert code == 0, err
    assert not (tmp_path / "keras" / "conversion_report.json").exists()
    code, stdout, err = _run(["--to", "transformers", tmp_path / "keras" / "model.keras", "--out", tmp_path / "back"], capsys)
    assert code == 0, err
    hf, info = transformers.MobileViTV2ForImageClassification.from_pretrained(tmp_path / "back", output_loading_info=True)
    assert not any(info.values()) and hf.config.id2label == LABELS
    report = json.loads((tmp_path / "back" / "conversion_report.json").read_text())
    assert report["source_format"] == "keras" and report["passed"]
    assert json.loads((tmp_path / "back" / "preprocessor_config.json").read_text())["crop_size"] == {"height": 64, "width": 64}


def test_a_disagreeing_reference_fails_the_report_with_status_1(fixtures_dir, tmp_path, capsys, monkeypatch):
    """The report is a real check: leave transformers' local conv undilated and it must fail."""
    from conversion import report

    monkeypatch.setattr(report, "patch_cvnets_dilation", lambda torch_model, config: [])
    out = tmp_path / "keras"
    code, stdout, err = _run([fixtures_dir / "cvnets_mobilevitv2_050_deeplabv3.pt", "--out", out], capsys)
    assert code == 1 and "disagree" in err and "FAIL" in stdout
    assert (out / "model.keras").exists()  # the conversion itself is written
    report = json.loads((out / "conversion_report.json").read_text())
    assert not report["passed"] and report["outputs"]["hidden_states[4]"]["max_abs_diff_over_std"] > 1e-2
    assert report["outputs"]["hidden_states[3]"]["max_abs_diff_over_std"] <= 1e-4  # stage 4 is not dilated


def _bad_inputs(tmp_path):
    """name -> (argv, a phrase the error must contain)."""
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 not really a zip archive" * 10)
    (tmp_path / "truncated.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    torch.save({"fc.weight": torch.zeros(3, 4), "fc.bias": torch.zeros(3)}, tmp_path / "resnet.pt")
    (tmp_path / "bad_config.json").write_text(json.dumps({"width_multiplier": -1}))
    torch.save({"conv_1.block.conv.weight": torch.zeros(1)}, tmp_path / "fake.pt")
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    out = tmp_path / "out"
    return {
        "missing": ([tmp_path / "nothing.pt", "--out", out], "does not exist"),
        "corrupt": ([tmp_path / "corrupt.pt", "--out", out], "not a readable PyTorch file"),
        "truncated": ([tmp_path / "truncated.safetensors", "--out", out], "not a readable safetensors file"),
        "other architecture": ([tmp_path / "resnet.pt", "--out", out], "not a MobileViTV2 checkpoint"),
        "invalid config": (
            [tmp_path / "resnet.pt", "--out", out, "--config", tmp_path / "bad_config.json"],
            "width_multiplier must be a positive number",
        ),
        "missing config": ([tmp_path / "resnet.pt", "--out", out, "--config", tmp_path / "no.json"], "does not exist"),
        "keras to transformers needs .keras": (["--to", "transformers", tmp_path / "resnet.pt", "--out", out], ".keras"),
        "out is a file": ([tmp_path / "fake.pt", "--out", tmp_path / "bad_config.json"], "not a directory"),
        "broken .keras": (["--to", "transformers", tmp_path / "broken.keras", "--out", out], "not a readable .keras"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing", "corrupt", "truncated", "other architecture", "invalid config", "missing config",
        "keras to transformers needs .keras", "out is a file", "broken .keras",
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, case):
    argv, phrase = _bad_inputs(tmp_path)[case]
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert phrase in err and "Traceback" not in err
    assert err.startswith("mobilevitv2 convert: error:") and err.count("\n") == 1


def test_invalid_config_is_an_error(tmp_path, capsys):
    _hf_classifier_dir(tmp_path / "hf")
    (tmp_path / "bad.json").write_text(json.dumps({"width_multiplier": -1}))
    code, _, err = _run([tmp_path / "hf", "--out", tmp_path / "out", "--config", tmp_path / "bad.json"], capsys)
    assert code == 2 and "width_multiplier must be a positive number" in err


def test_console_script_exit_status(tmp_path):
    """The installed entry point: status 2 and no traceback, not just `main`'s return value."""
    result = subprocess.run(
        [sys.executable, "-m", "keras_mobilevitv2.cli", "convert", str(tmp_path / "none.pt"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------ conversion cost
@pytest.mark.slow
def test_conversion_holds_one_numpy_copy_of_the_weights(tmp_path):
    """Width 2.0: the only full-size numpy copy is the checkpoint read; the model's variables (TF memory,
    not traced) are the second. Loading into the model adds per-tensor transients only."""
    hf = transformers.MobileViTV2ForImageClassification(transformers.MobileViTV2Config(width_multiplier=2.0))
    randomize_torch_module(hf.eval()).save_pretrained(tmp_path)
    del hf
    checkpoint_bytes = os.path.getsize(tmp_path / "model.safetensors")

    tracemalloc.start()
    try:
        model = convert_checkpoint(tmp_path, verbose=False)
        whole = tracemalloc.get_traced_memory()[1]
        hf_state_dict, _, _, _, _ = load_as_hf(tmp_path)
        tracemalloc.reset_peak()
        held = tracemalloc.get_traced_memory()[0]
        load_hf_state_dict(model, hf_state_dict)
        loading = tracemalloc.get_traced_memory()[1] - held
    finally:
        tracemalloc.stop()
    largest = max(v.nbytes for v in hf_state_dict.values())
    assert whole < 1.5 * checkpoint_bytes, (whole, checkpoint_bytes)
    assert loading < 0.2 * checkpoint_bytes and loading < 3 * largest, (loading, largest, checkpoint_bytes)
