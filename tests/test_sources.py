"""Checkpoint sources (conversion/sources.py, cvnets.py, timm.py): reading files safely, renaming
ml-cvnets / timm / Hugging Face keys onto transformers' names, inferring and checking the config.

The renaming is proven against transformers as the independent reference: the renamed fixtures
load strictly into transformers' MobileViTV2 and reproduce the logits ml-cvnets / timm computed.
"""

import argparse
import logging
import os
import pickle

import numpy as np
import pytest

from conversion import sources
from conversion.sources import (
    CheckpointError,
    check_shapes,
    detect_format,
    detect_task,
    expected_hf_shapes,
    infer_config,
    load_as_hf,
    read_checkpoint,
    read_hf_config,
    to_hf_state_dict,
)
from keras_mobilevitv2.config import MobileViTV2Config
from tests.conftest import max_rel_error, randomize_torch_module

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4  # max abs error / std of the reference


# ------------------------------------------------------------------ helpers
def hf_model(config_dict, task):
    classes = {
        "image_classification": transformers.MobileViTV2ForImageClassification,
        "semantic_segmentation": transformers.MobileViTV2ForSemanticSegmentation,
        "backbone": transformers.MobileViTV2Model,
    }
    return classes[task](transformers.MobileViTV2Config(**config_dict)).eval()


def load_strict(model, hf_state_dict):
    """Load a (prefixed) HF state dict into a transformers model; strict, float32 tensors."""
    tensors = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in hf_state_dict.items()}
    if isinstance(model, transformers.MobileViTV2Model):
        tensors = {k.removeprefix("mobilevitv2."): v for k, v in tensors.items()}
    # num_batches_tracked is not read back from checkpoints: the model's own buffers fill them.
    own = model.state_dict()
    tensors.update({k: v for k, v in own.items() if k.endswith("num_batches_tracked")})
    model.load_state_dict(tensors, strict=True)
    return model


def fixture_state(fixtures_dir, name):
    state_dict = read_checkpoint(fixtures_dir / name)
    fmt = detect_format(state_dict)
    return to_hf_state_dict(state_dict, fmt), fmt


# ---------------------------------------------------- parity with the fixtures
def test_cvnets_classifier_matches_mlcvnets(fixtures_dir):
    hf_sd, fmt = fixture_state(fixtures_dir, "cvnets_mobilevitv2_050_cls.pt")
    config, task, _ = infer_config(hf_sd)
    assert (fmt, task) == ("cvnets", "image_classification")
    model = load_strict(hf_model(config, task), hf_sd)
    io = np.load(fixtures_dir / "cvnets_mobilevitv2_050_cls_io.npz")
    with torch.no_grad():
        out = model(torch.from_numpy(io["pixel_values_nchw"]), output_hidden_states=True)
    assert max_rel_error(out.logits.numpy(), io["logits"]) <= TOLERANCE
    for level, hidden in zip((3, 4, 5), out.hidden_states[2:5]):
        assert max_rel_error(hidden.numpy(), io[f"encoder_out_l{level}"]) <= TOLERANCE, level


def test_cvnets_deeplabv3_matches_mlcvnets(fixtures_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="conversion.sources"):
        hf_sd, fmt = fixture_state(fixtures_dir, "cvnets_mobilevitv2_050_deeplabv3.pt")
    assert "dropped 7 cvnets keys seg_head.aux_head.*" in caplog.text
    assert not any("aux_head" in k for k in hf_sd)
    config, task, _ = infer_config(hf_sd)
    assert task == "semantic_segmentation"
    config["atrous_rates"] = [6, 12, 18]  # the fixture's (not stored in the weights)
    model = load_strict(hf_model(config, task), hf_sd)
    # ml-cvnets dilates the local 3x3 conv of the dilated stage 5, transformers does not.
    local = model.mobilevitv2.encoder.layer[4].conv_kxk.convolution
    local.dilation, local.padding = (2, 2), (2, 2)
    io = np.load(fixtures_dir / "cvnets_mobilevitv2_050_deeplabv3_io.npz")
    with torch.no_grad():
        out = model(torch.from_numpy(io["pixel_values_nchw"]), output_hidden_states=True)
        upsampled = torch.nn.functional.interpolate(out.logits, scale_factor=16, mode="bilinear", align_corners=True)
    assert max_rel_error(out.logits.numpy(), io["logits_head_raw"]) <= TOLERANCE
    assert max_rel_error(upsampled.numpy(), io["logits"]) <= TOLERANCE
    for level, hidden in zip((3, 4, 5), out.hidden_states[2:5]):
        assert max_rel_error(hidden.numpy(), io[f"encoder_out_l{level}"]) <= TOLERANCE, level


def test_timm_classifier_matches_timm(fixtures_dir):
    hf_sd, fmt = fixture_state(fixtures_dir, "timm_mobilevitv2_050.safetensors")
    config, task, _ = infer_config(hf_sd)
    assert (fmt, task) == ("timm", "image_classification")
    model = load_strict(hf_model(config, task), hf_sd)
    io = np.load(fixtures_dir / "timm_mobilevitv2_050_io.npz")
    with torch.no_grad():
        logits = model(torch.from_numpy(io["pixel_values_nchw"])).logits.numpy()
    assert max_rel_error(logits, io["logits"]) <= TOLERANCE


# ------------------------------------------------------------ config inference
@pytest.mark.parametrize(
    "name, expected",
    [
        ("cvnets_mobilevitv2_050_cls.pt", {"width_multiplier": 0.5, "num_labels": 10}),
        ("timm_mobilevitv2_050.safetensors", {"width_multiplier": 0.5, "num_labels": 1000}),
        (
            "cvnets_mobilevitv2_050_deeplabv3.pt",
            {"width_multiplier": 0.5, "num_labels": 21, "aspp_out_channels": 64, "output_stride": 16},
        ),
    ],
)
def test_infer_config_on_fixtures(fixtures_dir, name, expected):
    hf_sd, _ = fixture_state(fixtures_dir, name)
    config, _, notes = infer_config(hf_sd)
    assert {k: config[k] for k in expected} == expected
    assert config["n_attn_blocks"] == [2, 4, 3] and config["ffn_multiplier"] == 2
    if "aspp_out_channels" in expected:
        assert config["atrous_rates"] == [6, 12, 18]
        assert any("not stored in the weights" in note for note in notes)


@pytest.mark.parametrize(
    "overrides, first_bad_key, expected_shape, found_shape",
    [
        ({"width_multiplier": 1.0}, "mobilevitv2.conv_stem.convolution.weight", (32, 3, 3, 3), (16, 3, 3, 3)),
        ({"num_labels": 5}, "classifier.weight", (5, 256), (10, 256)),
        ({"ffn_multiplier": 3}, "mobilevitv2.encoder.layer.2.transformer.layer.0.ffn.conv1.convolution.weight",
         (192, 64, 1, 1), (128, 64, 1, 1)),
    ],
)
def test_disagreeing_config_names_the_first_bad_tensor(
    fixtures_dir, overrides, first_bad_key, expected_shape, found_shape
):
    hf_sd, _ = fixture_state(fixtures_dir, "cvnets_mobilevitv2_050_cls.pt")
    config, _, _ = infer_config(hf_sd)
    with pytest.raises(CheckpointError) as info:
        check_shapes(hf_sd, {**config, **overrides})
    message = str(info.value)
    assert first_bad_key in message and str(expected_shape) in message and str(found_shape) in message


def test_config_with_other_block_counts_reports_missing_and_unexpected(fixtures_dir):
    hf_sd, _ = fixture_state(fixtures_dir, "cvnets_mobilevitv2_050_cls.pt")
    with pytest.raises(CheckpointError, match=r"missing: 'mobilevitv2\.encoder\.layer\.2\.transformer\.layer\.2\."):
        check_shapes(hf_sd, {"width_multiplier": 0.5, "num_labels": 10, "n_attn_blocks": [3, 4, 3]})
    unexpected = r"no place in a image_classification model: 'mobilevitv2\.encoder\.layer\.3\.transformer\.layer\.3\."
    with pytest.raises(CheckpointError, match=unexpected):
        check_shapes(hf_sd, {"width_multiplier": 0.5, "num_labels": 10, "n_attn_blocks": [2, 3, 3]})


@pytest.mark.parametrize("width", [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0])
def test_expected_shapes_match_transformers_and_infer_config_reads_them(width):
    """The shapes computed without torch are exactly transformers' state_dict, for every task."""
    config = {"width_multiplier": width, "num_labels": 7, "aspp_out_channels": 48, "ffn_multiplier": 3,
              "n_attn_blocks": [1, 2, 3] if width == 0.75 else [2, 4, 3]}
    for task in sources.TASKS:
        with torch.device("meta"):
            model = hf_model(config, task)
        prefix = "mobilevitv2." if task == "backbone" else ""
        reference = {
            prefix + k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")
        }
        expected = expected_hf_shapes(config, task)
        assert list(expected.items()) == list(reference.items()), task
        # ... and the config is read back off those shapes.
        inferred, inferred_task, _ = infer_config({k: np.empty(shape, np.float32) for k, shape in reference.items()})
        assert inferred_task == task
        assert {k: inferred[k] for k in ("width_multiplier", "n_attn_blocks", "ffn_multiplier")} == {
            k: config[k] for k in ("width_multiplier", "n_attn_blocks", "ffn_multiplier")
        }


# -------------------------------------------------- Hugging Face round trips
@pytest.mark.parametrize("task", sources.TASKS)
@pytest.mark.parametrize("safe_serialization", [True, False])
def test_save_pretrained_round_trip(tmp_path, task, safe_serialization):
    config = {"width_multiplier": 0.5, "num_labels": 3, "aspp_out_channels": 32}
    model = randomize_torch_module(hf_model(config, task), seed=1)
    if safe_serialization:
        model.save_pretrained(tmp_path)
        assert (tmp_path / "model.safetensors").is_file()
    else:  # transformers 5 always writes safetensors: build the legacy pytorch_model.bin layout by hand
        model.config.save_pretrained(tmp_path)
        torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")

    state_dict = read_checkpoint(tmp_path)
    assert detect_format(state_dict) == "hf"
    hf_sd = to_hf_state_dict(state_dict, "hf")
    prefix = "mobilevitv2." if task == "backbone" else ""
    reference = {prefix + k: v.numpy() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert sorted(hf_sd) == sorted(reference)  # safetensors stores keys sorted
    for key, value in reference.items():
        assert hf_sd[key].dtype == np.float32 and np.array_equal(hf_sd[key], value), key

    hf_config = read_hf_config(tmp_path)
    assert hf_config["width_multiplier"] == 0.5
    check_shapes(hf_sd, hf_config)
    inferred, inferred_task, _ = infer_config(hf_sd)
    assert inferred_task == task and inferred["width_multiplier"] == 0.5
    _, loaded_config, loaded_task, fmt, notes = load_as_hf(tmp_path)
    assert (loaded_task, fmt) == (task, "hf") and "config from config.json" in notes
    assert MobileViTV2Config.from_dict(loaded_config).num_labels == 3


# ----------------------------------------------------- reading, unwrapping
def tiny_state_dict():
    return {
        "conv.weight": torch.randn(4, 3, 3, 3),
        "bn.weight": torch.randn(4),
        "bn.num_batches_tracked": torch.tensor(7),
        "half.weight": torch.randn(2, 2).half(),
    }


def test_training_checkpoint_is_unwrapped(tmp_path):
    plain, ema = tiny_state_dict(), tiny_state_dict()
    path = tmp_path / "checkpoint-3.pth.tar"  # timm's training checkpoint layout
    torch.save(
        {
            "epoch": 3,
            "args": argparse.Namespace(lr=0.1),
            "state_dict": {f"module.{k}": v for k, v in plain.items()},
            "state_dict_ema": {f"module.{k}": v for k, v in ema.items()},
        },
        path,
    )
    for prefer_ema, source in ((False, plain), (True, ema)):
        state_dict = read_checkpoint(path, prefer_ema=prefer_ema)
        assert list(state_dict) == ["conv.weight", "bn.weight", "half.weight"]
        assert all(v.dtype == np.float32 for v in state_dict.values())
        for key, value in state_dict.items():
            np.testing.assert_array_equal(value, source[key].float().numpy())


def test_bfloat16_safetensors_read_without_torch_decoding(tmp_path):
    from safetensors.torch import save_file

    tensor = torch.randn(5, 3).bfloat16()
    save_file({"w": tensor, "b": torch.randn(3)}, tmp_path / "bf16.safetensors")
    state_dict = read_checkpoint(tmp_path / "bf16.safetensors")
    np.testing.assert_array_equal(state_dict["w"], tensor.float().numpy())
    assert state_dict["w"].dtype == np.float32


# ----------------------------------------------------------------- errors
class NotATensor:
    pass


class MakesADirectory:
    """Unpickling this calls os.mkdir: the marker directory shows whether anything ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nothing\.pt does not exist"):
        read_checkpoint(tmp_path / "nothing.pt")


def test_directory_without_weights(tmp_path):
    with pytest.raises(CheckpointError, match=r"holds none of model\.safetensors"):
        read_checkpoint(tmp_path)


@pytest.mark.parametrize("name", ["empty.safetensors", "empty.pt"])
def test_empty_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(CheckpointError, match=rf"{name} is empty \(0 bytes\)"):
        read_checkpoint(tmp_path / name)


def test_truncated_safetensors(tmp_path):
    from safetensors.numpy import save_file

    save_file({"w": np.ones((64, 64), np.float32)}, tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    expected = r"cut\.safetensors is not a readable safetensors file \(truncated or corrupt\?\)"
    with pytest.raises(CheckpointError, match=expected) as info:
        read_checkpoint(tmp_path / "cut.safetensors")
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize("zip_format", [True, False])
def test_truncated_torch_file(tmp_path, zip_format):
    torch.save({"w": torch.ones(64, 64)}, tmp_path / "full.pt", _use_new_zipfile_serialization=zip_format)
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    expected = r"cut\.pt is not a readable PyTorch file \(truncated or corrupt\?\)"
    with pytest.raises(CheckpointError, match=expected) as info:
        read_checkpoint(tmp_path / "cut.pt")
    assert info.value.__suppress_context__


def test_pickle_of_a_custom_class_is_refused(tmp_path):
    torch.save({"w": torch.ones(2), "extra": NotATensor()}, tmp_path / "custom.pt")
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(tmp_path / "custom.pt")
    message = str(info.value)
    assert "refused to load" in message and "NOT executed" in message and "weights_only=True" in message
    assert "NotATensor" in message  # names what it would have had to import


def test_pickle_that_runs_code_is_not_executed(tmp_path):
    marker = tmp_path / "was_executed"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"w": MakesADirectory(str(marker))}, protocol=2))
    with pytest.raises(CheckpointError, match=r"refused to load .*evil\.pth.*NOT executed"):
        read_checkpoint(path)
    assert not marker.exists()


def test_file_without_tensors(tmp_path):
    from safetensors.numpy import save_file

    torch.save({"epoch": 3, "best_metric": 0.5}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match=r"meta\.pt holds no tensors: top-level keys \['epoch', 'best_metric'\]"):
        read_checkpoint(tmp_path / "meta.pt")
    save_file({}, tmp_path / "none.safetensors")
    with pytest.raises(CheckpointError, match=r"none\.safetensors holds no tensors"):
        read_checkpoint(tmp_path / "none.safetensors")
    torch.save({"step": torch.tensor(3)}, tmp_path / "ints.pt")
    with pytest.raises(CheckpointError, match=r"ints\.pt: tensor step has dtype torch\.int64"):
        read_checkpoint(tmp_path / "ints.pt")


@pytest.mark.parametrize("name", ["weights.ckpt", "weights.h5", "weights.npz"])
def test_unsupported_extension(tmp_path, name):
    (tmp_path / name).write_bytes(b"not empty")
    with pytest.raises(CheckpointError, match=rf"{name}: unsupported checkpoint type \(expected \.safetensors, \.bin"):
        read_checkpoint(tmp_path / name)


def test_resnet_is_not_mobilevitv2(tmp_path):
    resnet = {"conv1.weight": torch.randn(8, 3, 7, 7), "layer1.0.conv1.weight": torch.randn(8, 8, 3, 3),
              "fc.weight": torch.randn(10, 8)}
    torch.save(resnet, tmp_path / "resnet.pt")
    state_dict = read_checkpoint(tmp_path / "resnet.pt")
    with pytest.raises(CheckpointError) as info:
        detect_format(state_dict)
    message = str(info.value)
    assert "not a MobileViTV2 checkpoint" in message
    assert "'conv1.weight', 'layer1.0.conv1.weight', 'fc.weight'" in message  # keys seen
    assert "conv_1.block.conv.weight" in message and "stem.conv.weight" in message  # what was expected


def test_mobilevit_v1_keys_are_not_mobilevitv2():
    v1 = {"conv_1.block.conv.weight": 0, "layer_3.1.global_rep.0.pre_norm_mha.1.qkv_proj.weight": 0}
    with pytest.raises(CheckpointError, match="follow cvnets naming but hold no MobileViTV2 separable-attention"):
        detect_format(v1)


def test_unknown_source_key_is_named(fixtures_dir):
    state_dict = read_checkpoint(fixtures_dir / "cvnets_mobilevitv2_050_cls.pt")
    state_dict["conv_1x1_exp.block.conv.weight"] = np.zeros((512, 256, 1, 1), np.float32)
    expected = r"1 cvnets keys have no MobileViTV2 \(Hugging Face\) counterpart: 'conv_1x1_exp"
    with pytest.raises(CheckpointError, match=expected):
        to_hf_state_dict(state_dict, "cvnets")


def test_task_detection_and_head_conflict():
    assert detect_task({"mobilevitv2.conv_stem.convolution.weight": 0}) == "backbone"
    with pytest.raises(CheckpointError, match="both a classifier and a segmentation head"):
        detect_task({"classifier.weight": 0, "segmentation_head.classifier.convolution.weight": 0})


# ------------------------------------------------------- the source registry
def test_a_new_source_is_one_module_and_one_registry_entry(monkeypatch):
    """A made-up family registered in `conversion.registry.SOURCES` alone is detected, renamed and
    transformed by its `filter_state_dict` hook (here: convolutions stored channels-last, which no
    renaming can express), and listed in the detection error; the state dict is then transformers'."""
    import re
    import types

    from conversion import registry

    model = randomize_torch_module(hf_model({"width_multiplier": 0.5, "num_labels": 3}, "image_classification"), seed=2)
    reference = {k: v.numpy() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    stored = {"net." + k: (np.transpose(v, (2, 3, 1, 0)) if v.ndim == 4 else v) for k, v in reference.items()}

    seen = []

    def filter_state_dict(state_dict):
        seen.append(len(state_dict))
        return {k: (np.transpose(v, (3, 2, 0, 1)) if v.ndim == 4 else v) for k, v in state_dict.items()}

    fake = types.SimpleNamespace(
        NAME="fake", LABEL="fake-hub", STEM_KEY=re.compile(r"net\.mobilevitv2\.conv_stem\.convolution\.weight"),
        STEM_EXAMPLE="net.mobilevitv2.conv_stem.convolution.weight", ATTENTION_KEY="attention.qkv_proj.convolution.weight",
        DILATES_LOCAL_CONV=True, rename_key=lambda key: key.removeprefix("net."), filter_state_dict=filter_state_dict,
    )
    monkeypatch.setattr(registry, "SOURCES", registry.SOURCES + (fake,))
    assert detect_format(stored) == "fake"
    renamed = to_hf_state_dict(stored, "fake")
    assert seen == [len(stored)] and sorted(renamed) == sorted(reference)
    for key, value in reference.items():
        assert np.array_equal(renamed[key], value), key
    check_shapes(renamed, {"width_multiplier": 0.5, "num_labels": 3})
    with pytest.raises(CheckpointError, match=re.escape("timm 'stem.conv.weight', fake-hub 'net.mobilevitv2.conv_stem")):
        detect_format({"foo.weight": np.zeros(1)})
    with pytest.raises(CheckpointError, match="unknown checkpoint format 'nope', expected one of hf, cvnets, timm, fake"):
        to_hf_state_dict(stored, "nope")


def test_every_registered_source_has_the_contract():
    from conversion import registry

    names = [source.NAME for source in registry.SOURCES]
    assert names == ["hf", "cvnets", "timm"] and len(set(names)) == len(names)
    for source in registry.SOURCES:
        assert source.STEM_KEY.fullmatch(source.STEM_EXAMPLE), source.NAME
        assert isinstance(source.DILATES_LOCAL_CONV, bool) and source.LABEL and source.ATTENTION_KEY
        has_table = all(hasattr(source, field) for field in ("MODULES", "LEAVES", "DROPPED"))
        assert has_table != hasattr(source, "rename_key"), f"{source.NAME}: give rename_key or the key table, not both"
        assert hasattr(source, "owns_config") == hasattr(source, "read_config"), source.NAME
    # config.json readers claim disjoint configs: a timm hub config, anything else is transformers'
    owners = lambda config: [s.NAME for s in registry.SOURCES if hasattr(s, "owns_config") and s.owns_config(config)]  # noqa: E731
    assert owners({"architecture": "mobilevitv2_050", "num_classes": 3}) == ["timm"]
    assert owners({"model_type": "mobilevitv2"}) == owners({}) == ["hf"]
