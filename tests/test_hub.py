"""from_pretrained's names, hub failures and self-verifying cache; presets; `info`; the serving name."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import keras_mobilevitv2 as mv2
from keras_mobilevitv2 import hub
from keras_mobilevitv2.config import MobileViTV2Config
from keras_mobilevitv2.models import from_preset, save_to_preset
from tests.conftest import randomize_keras_model

huggingface_hub = pytest.importorskip("huggingface_hub")

CLS_FIXTURE = "cvnets_mobilevitv2_050_cls.pt"


def _x(seed=0):
    return np.random.RandomState(seed).rand(1, 64, 64, 3).astype("float32")


@pytest.fixture
def source(tmp_path, fixtures_dir):
    """A local ml-cvnets checkpoint directory, as a user's download."""
    path = tmp_path / "ckpt"
    path.mkdir()
    shutil.copy(fixtures_dir / CLS_FIXTURE, path / "pytorch_model.bin")
    return path


def _no_conversion(monkeypatch):
    import conversion.convert

    def fail(*args, **kwargs):
        raise AssertionError("converted again instead of using the cache")

    monkeypatch.setattr(conversion.convert, "convert_checkpoint", fail)


# ==================================================================== cache
def test_a_truncated_cache_entry_is_rebuilt_not_returned(source, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = mv2.from_pretrained(source, cache_dir=cache, verbose=False)
    (entry,) = cache.glob("*.keras")
    record = json.loads((cache / (entry.name + ".json")).read_text())
    assert record["entry_sha256"] == hub._sha256_file(entry) and record["source_sha256"] == hub.source_digest(source)
    data = entry.read_bytes()
    entry.write_bytes(data[: len(data) // 2])
    again = mv2.from_pretrained(source, cache_dir=cache, verbose=False)  # converted again, no error
    np.testing.assert_array_equal(np.asarray(first(_x())), np.asarray(again(_x())))
    assert entry.read_bytes() != data[: len(data) // 2]
    _no_conversion(monkeypatch)  # the rewritten entry is intact: used as is
    third = mv2.from_pretrained(source, cache_dir=cache, verbose=False)
    np.testing.assert_array_equal(np.asarray(first(_x())), np.asarray(third(_x())))


def test_another_valid_model_under_the_same_key_is_not_returned(source, tmp_path, capsys):
    cache = tmp_path / "cache"
    first = mv2.from_pretrained(source, cache_dir=cache, verbose=False)
    (entry,) = cache.glob("*.keras")
    other = randomize_keras_model(mv2.MobileViTV2ImageClassifier(MobileViTV2Config(width_multiplier=0.5, num_labels=10)), 9)
    os.remove(entry)
    other.save(entry)  # a valid .keras, but not the one the record describes
    again = mv2.from_pretrained(source, cache_dir=cache, verbose=True)
    assert "is not used: its bytes differ" in capsys.readouterr().out
    np.testing.assert_array_equal(np.asarray(first(_x())), np.asarray(again(_x())))
    assert not np.allclose(np.asarray(other(_x())), np.asarray(again(_x())))


def test_an_entry_without_its_record_is_rebuilt(source, tmp_path):
    cache = tmp_path / "cache"
    mv2.from_pretrained(source, cache_dir=cache, verbose=False)
    (record,) = cache.glob("*.json")
    record.write_text("{not json")
    mv2.from_pretrained(source, cache_dir=cache, verbose=False)
    assert "entry_sha256" in json.loads(record.read_text())
    assert not list(cache.glob("*partial*"))  # written beside and renamed: no leftovers


# ==================================================================== paths and hub ids
@pytest.mark.parametrize(
    "name",
    ["converted/modl.keras", "checkpoints/mobilevit.pt", "./owner/name", "/abs/owner/name", "a/b/c", "w.safetensors"],
)
def test_a_mistyped_local_path_is_not_found_never_a_hub_id(tmp_path, monkeypatch, name):
    def no_hub(*args, **kwargs):
        raise AssertionError("a local path was sent to the hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(hub.NotFoundError, match=f"not found: {name}") as info:
        mv2.from_pretrained(name, cache_dir=tmp_path / "c")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)


def test_a_name_under_an_existing_local_directory_is_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "converted").mkdir()
    assert not hub.looks_like_hub_id("converted/model")
    assert hub.looks_like_hub_id("apple/mobilevitv2-1.0-imagenet1k-256")
    assert hub.looks_like_hub_id("timm/mobilevitv2_050.cvnets_in1k")


def test_an_unreachable_hub_is_one_clean_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        try:
            raise ConnectionError("Max retries exceeded")
        except ConnectionError as e:
            raise huggingface_hub.errors.LocalEntryNotFoundError("cannot find the requested files in the disk cache") from e

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(hub.HubError) as info:
        mv2.from_pretrained("apple/mobilevitv2-0.5-imagenet1k-256", cache_dir=tmp_path / "c")
    message = str(info.value)
    assert "could not download 'apple/mobilevitv2-0.5-imagenet1k-256'" in message
    assert "unreachable" in message and "pass the local directory or weight file" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert isinstance(info.value, ValueError)


def test_hub_snapshot_is_converted(tmp_path, fixtures_dir, monkeypatch):
    snapshot = tmp_path / "hf-cache" / "models--someone--m" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    shutil.copy(fixtures_dir / CLS_FIXTURE, snapshot / "pytorch_model.bin")
    calls = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, cache_dir=None):
        calls.append((repo_id, revision))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    model = mv2.from_pretrained("someone/m", revision="v1", cache_dir=tmp_path / "c", verbose=False)
    assert calls == [("someone/m", "v1")] and model.config.num_labels == 10


# ==================================================================== presets
def _converted(fixtures_dir):
    from conversion.convert import convert_checkpoint

    return convert_checkpoint(fixtures_dir / CLS_FIXTURE, verbose=False)


def test_preset_round_trip_and_files(tmp_path, fixtures_dir):
    model = _converted(fixtures_dir)
    directory = save_to_preset(model, tmp_path / "preset")
    files = sorted(os.listdir(directory))
    assert files == ["config.json", "labels.json", "metadata.json", "model.weights.h5", "preprocessor.json"]
    metadata = json.loads((tmp_path / "preset" / "metadata.json").read_text())
    assert metadata["task"] == "image_classification" and metadata["parameter_count"] == model.count_params()
    assert metadata["keras_version"] and metadata["keras_mobilevitv2_version"] == mv2.__version__
    assert metadata["converted_from"]["source_format"] == "cvnets"
    loaded = from_preset(tmp_path / "preset")
    np.testing.assert_array_equal(np.asarray(loaded(_x())), np.asarray(model(_x())))
    assert loaded.config == model.config and loaded.preprocessing == model.preprocessing
    backbone = from_preset(tmp_path / "preset", task="backbone")
    assert type(backbone).__name__ == "MobileViTV2Backbone"
    with pytest.raises(FileExistsError, match="not empty"):
        save_to_preset(model, tmp_path / "preset")


def test_preset_from_a_hub_handle_and_without_the_conversion_package(tmp_path, fixtures_dir, monkeypatch):
    model = randomize_keras_model(
        mv2.MobileViTV2SemanticSegmenter(MobileViTV2Config(width_multiplier=0.5, num_labels=3, output_stride=16, aspp_out_channels=32)),
        4,
    )
    save_to_preset(model, tmp_path / "seg")
    seen = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, cache_dir=None):
        seen.append((repo_id, tuple(allow_patterns)))
        return str(tmp_path / "seg")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    loaded = from_preset("hf://me/my-segmenter")
    assert seen[0][0] == "me/my-segmenter" and "model.weights.h5" in seen[0][1]
    np.testing.assert_allclose(np.asarray(loaded(_x())), np.asarray(model(_x())), atol=1e-6)

    code = (
        "import sys\n"
        "sys.modules['conversion'] = None  # the conversion package cannot be imported\n"
        "import numpy as np\n"
        "from keras_mobilevitv2.models import from_preset\n"
        "m = from_preset(sys.argv[1])\n"
        "print(type(m).__name__, m.config.num_labels)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "seg")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MobileViTV2SemanticSegmenter 3" in result.stdout


def test_incomplete_preset_names_the_file(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "config.json").write_text(json.dumps({"task": "image_classification", "config": {"n_attn_blocks": [1]}}))
    with pytest.raises(ValueError, match=r"p/config.json: invalid config: n_attn_blocks"):
        from_preset(tmp_path / "p")
    with pytest.raises(ValueError, match="not found: nowhere"):
        from_preset("nowhere")


# ==================================================================== info and serving name
def test_info_shows_only_the_fields_of_the_task(tmp_path, capsys):
    from keras_mobilevitv2.cli import main

    assert main(["info", "mobilevitv2-0.5-imagenet1k-256"]) == 0
    out = capsys.readouterr().out
    assert "width_multiplier: 0.5" in out and "aspp" not in out and "atrous" not in out
    assert main(["info", "mobilevitv2-0.5-voc-deeplabv3"]) == 0
    out = capsys.readouterr().out
    assert "aspp_out_channels: 512" in out and "atrous_rates: [6, 12, 18]" in out and "output_stride: 16" in out
    save_to_preset(from_preset("mobilevitv2-0.5-imagenet1k-256"), tmp_path / "p")
    assert main(["info", str(tmp_path / "p")]) == 0
    assert "num_labels: 1000" in capsys.readouterr().out


def test_serving_name_names_the_model(tmp_path):
    from keras_mobilevitv2.cli.export import _model_name

    for preset, name in (("mobilevitv2-1.0-imagenet1k-256", "mobilevitv2-1.0-imagenet"), ("mobilevitv2-0.5-voc-deeplabv3", "mobilevitv2-0.5-deeplabv3"), ("mobilevitv2-0.75-imagenet1k-256", "mobilevitv2-0.75-imagenet")):
        path = tmp_path / "model.keras"
        from_preset(preset).save(path)
        assert _model_name(str(path)) == name
    (tmp_path / "my model.keras").write_bytes(b"not a zip")
    assert _model_name(str(tmp_path / "my model.keras")) == "my-model"
