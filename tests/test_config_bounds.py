"""Hostile hyper-parameters (issue 9): refused with the field, the value and the bound, before
anything is allocated, from a dict, a config.json, a preprocessor_config.json and a .keras file."""

import json
import subprocess
import sys
import textwrap
import zipfile

import pytest

from keras_mobilevitv2 import config as config_module
from keras_mobilevitv2.config import MobileViTV2Config
from keras_mobilevitv2.preprocessing import PreprocessingConfig


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"num_labels": 10**8}, ["num_labels", "100000000", "at most 100000"]),
        ({"num_labels": 10**12}, ["num_labels", "1000000000000", "at most 100000"]),
        ({"n_attn_blocks": [10**9, 4, 3]}, ["n_attn_blocks", "1000000000", "at most 64"]),
        ({"width_multiplier": 64}, ["width_multiplier", "64", "at most 4.0"]),
        ({"patch_size": 4096}, ["patch_size", "4096", "at most 16"]),
        ({"image_size": 10**6}, ["image_size", "1000000", "at most 8192"]),
        ({"base_attn_unit_dims": [128, 10**7, 256]}, ["base_attn_unit_dims", "10000000", "at most 4096"]),
        ({"ffn_multiplier": 10**6}, ["ffn_multiplier", "1000000", "at most 16"]),
        ({"aspp_out_channels": 10**6}, ["aspp_out_channels", "1000000", "at most 4096"]),
        ({"atrous_rates": [6, 12, 10**6]}, ["atrous_rates", "1000000", "at most 1024"]),
        ({"n_attn_blocks": None}, ["n_attn_blocks", "None", "list"]),
        ({"n_attn_blocks": 3}, ["n_attn_blocks", "3", "list"]),
        ({"atrous_rates": 6}, ["atrous_rates", "6", "list"]),
        ({"label2id": "x"}, ["label2id", "'x'"]),
        ({"id2label": {"a": "cat"}}, ["id2label", "'a'"]),
    ],
)
def test_hostile_config_values_are_clean_errors(fields, words, tmp_path):
    with pytest.raises(ValueError) as err:
        MobileViTV2Config.from_dict(fields)
    for word in words:
        assert word in str(err.value)
    path = tmp_path / "config.json"  # the same through a config.json file
    path.write_text(json.dumps({"model_type": "mobilevitv2", **fields}))
    with pytest.raises(ValueError, match=list(fields)[0]):
        MobileViTV2Config.from_json_file(path)


def test_bounds_admit_the_released_models():
    for width in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0):
        MobileViTV2Config(width_multiplier=width, num_labels=1000, image_size=256)
    MobileViTV2Config(num_labels=config_module.MAX_NUM_LABELS, width_multiplier=config_module.MAX_WIDTH_MULTIPLIER)


@pytest.mark.parametrize(
    "hf_dict, words",
    [
        ({"size": {"shortest_edge": 10**6}}, ["shortest_edge", "1000000", "at most 8192"]),
        ({"crop_size": {"height": 10**6, "width": 256}}, ["crop_height", "1000000", "at most 8192"]),
        ({"size": {"shortest_edge": "big"}}, ["size", "'big'"]),
        ({"size": [1, 2]}, ["size", "[1, 2]"]),
        ({"crop_size": {"height": None, "width": 3}}, ["crop_size"]),
        ({"resample": [2]}, ["resample", "[2]"]),
        ({"do_resize": "yes"}, ["do_resize", "'yes'"]),
    ],
)
def test_invalid_preprocessor_config_is_a_clean_error(hf_dict, words):
    with pytest.raises(ValueError) as err:
        PreprocessingConfig.from_hf_dict(hf_dict)
    for word in words:
        assert word in str(err.value)


def test_preprocessing_dict_of_a_saved_model_is_checked():
    with pytest.raises(ValueError, match="shortest_edge must be at most 8192"):
        PreprocessingConfig.from_dict({"shortest_edge": 10**6})
    with pytest.raises(ValueError, match="unknown preprocessing field"):
        PreprocessingConfig.from_dict({"shortest_edges": 3})
    with pytest.raises(ValueError, match="must be a dict"):
        PreprocessingConfig.from_dict("x")


def _edit_keras_file(source, target, edit):
    """Copy a .keras zip, passing its config.json through `edit`."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                data = json.dumps(edit(json.loads(data))).encode()
            zout.writestr(item, data)


def _set_everywhere(tree, key, value):
    """Set `key` in every MobileViTV2Config dict inside a Keras config tree (task and backbone)."""
    if isinstance(tree, dict):
        if "model_type" in tree and key in tree or (key == "num_labels" and "id2label" in tree):
            if key == "num_labels":
                tree.pop("id2label", None)
                tree.pop("label2id", None)
            tree[key] = value
        for v in tree.values():
            _set_everywhere(v, key, value)
    elif isinstance(tree, list):
        for v in tree:
            _set_everywhere(v, key, value)
    return tree


HOSTILE_KERAS_FILES = {
    "width_multiplier": (64, "width_multiplier must be at most 4.0"),
    "num_labels": (10**8, "num_labels must be at most 100000"),
}


@pytest.fixture(scope="module")
def hostile_loads(tmp_path_factory):
    """One .keras file per hostile field, all loaded in one child process whose peak RSS is
    asserted: allocating a hostile model (width 64: ~10^10 weights; 10^8 labels: 10^8 x 256
    floats) would exceed it. ({field: the child's ERROR line}, peak RSS in KB)."""
    from keras_mobilevitv2.config import MobileViTV2Config
    from keras_mobilevitv2.image_classifier import MobileViTV2ImageClassifier

    base = tmp_path_factory.mktemp("hostile")
    model = MobileViTV2ImageClassifier(MobileViTV2Config(width_multiplier=0.5, num_labels=3))
    good = base / "good.keras"
    model.save(good)
    paths = {}
    for key, (value, _) in HOSTILE_KERAS_FILES.items():
        paths[key] = base / f"bad_{key}.keras"
        _edit_keras_file(good, paths[key], lambda tree: _set_everywhere(tree, key, value))
        assert str(value) in zipfile.ZipFile(paths[key]).read("config.json").decode()
    code = textwrap.dedent(
        """
        import resource, sys
        from keras_mobilevitv2.saving import load_model
        for key, path in zip(sys.argv[1::2], sys.argv[2::2]):
            try:
                load_model(path)
                print(key, "LOADED")
            except ValueError as err:
                print(key, "ERROR", str(err).replace("\\n", " "))
        print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        """
    )
    argv = [str(v) for key, path in paths.items() for v in (key, path)]
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.split(" ", 1)[0] in paths)
    return lines, int(result.stdout.split("MAXRSS_KB")[-1]), result.stdout + result.stderr[-2000:]


@pytest.mark.parametrize("key", sorted(HOSTILE_KERAS_FILES))
def test_hostile_keras_file_fails_cleanly_without_allocating(key, hostile_loads):
    lines, maxrss_kb, log = hostile_loads
    words = HOSTILE_KERAS_FILES[key][1]
    assert lines.get(key, "").startswith("ERROR") and words in lines[key], log
    assert maxrss_kb < 3 * 1024 * 1024  # a normal load is well under 1.5 GB; a hostile model is >= 40 GB
