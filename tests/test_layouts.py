"""Checkpoints as users download them: every published layout converts with no arguments.

Each layout is built locally with the file names and JSON fields its hub uses (transformers'
`save_pretrained`, timm's `push_to_hf_hub` config, ml-cvnets files and training checkpoints,
sharded safetensors), from the shared fixtures or randomized transformers models, and converted
as a directory, a single file and a hub id (a stand-in `snapshot_download` serves the local
directory: the hub is unreachable here). Outputs are compared with the reference outputs.
"""

import json
import os
import shutil

import numpy as np
import pytest

import keras_mobilevitv2 as mv2
from conversion.convert import convert_checkpoint
from conversion.sources import CheckpointError, load_source
from keras_mobilevitv2.labels import default_labels, label_set
from tests.conftest import max_rel_error, randomize_torch_module

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
huggingface_hub = pytest.importorskip("huggingface_hub")

TOL = 1e-4
TIMM_FIXTURE = "timm_mobilevitv2_050.safetensors"
CLS_FIXTURE = "cvnets_mobilevitv2_050_cls.pt"
SEG_FIXTURE = "cvnets_mobilevitv2_050_deeplabv3.pt"

# What timm's `push_to_hf_hub` writes for timm/mobilevitv2_050.cvnets_in1k (timm/models/_hub.py
# `save_config_for_hf`: architecture, num_classes, num_features, global_pool, pretrained_cfg).
TIMM_CONFIG = {
    "architecture": "mobilevitv2_050",
    "num_classes": 1000,
    "num_features": 256,
    "global_pool": "avg",
    "pretrained_cfg": {
        "tag": "cvnets_in1k",
        "custom_load": False,
        "input_size": [3, 256, 256],
        "fixed_input_size": False,
        "interpolation": "bicubic",
        "crop_pct": 0.888,
        "crop_mode": "center",
        "mean": [0.0, 0.0, 0.0],
        "std": [1.0, 1.0, 1.0],
        "num_classes": 1000,
        "pool_size": [8, 8],
        "first_conv": "stem.conv",
        "classifier": "head.fc",
    },
}


def nhwc(io):
    return io["pixel_values_nchw"].transpose(0, 2, 3, 1)


@pytest.fixture
def fake_hub(monkeypatch):
    """Serve hub ids from local directories: {repo_id: dir}; records the calls."""
    repos, calls = {}, []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, cache_dir=None):
        calls.append((repo_id, tuple(allow_patterns or ())))
        if repo_id not in repos:
            raise huggingface_hub.errors.RepositoryNotFoundError(f"404 Client Error: Repository Not Found for {repo_id}")
        return str(repos[repo_id])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return repos, calls


# ============================================================ timm hub repositories
def _timm_repo(path, fixtures_dir, config=TIMM_CONFIG):
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(fixtures_dir / TIMM_FIXTURE, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def test_timm_repo_converts_as_directory_file_and_hub_id(tmp_path, fixtures_dir, fake_hub):
    io = np.load(fixtures_dir / "timm_mobilevitv2_050_io.npz")
    repo = _timm_repo(tmp_path / "timm-repo", fixtures_dir)
    repos, _ = fake_hub
    repos["timm/mobilevitv2_050.cvnets_in1k"] = repo
    for source in (repo, repo / "model.safetensors"):
        model = convert_checkpoint(source, verbose=False)
        assert max_rel_error(model(nhwc(io)), io["logits"]) < TOL
        notes = "\n".join(model.conversion_notes)
        assert "timm checkpoint" in notes and "timm config.json: architecture mobilevitv2_050" in notes
        assert "num_labels 1000: num_classes of the timm config" in notes
        # timm names no classes: the ImageNet-1k set is applied, and said so.
        assert model.config.id2label[1] == "goldfish" and "imagenet1k label set" in notes
        # preprocessing from pretrained_cfg: shorter side floor(256 / 0.888) = 288, bicubic, RGB
        p = model.preprocessing
        assert (p.shortest_edge, p.crop_height, p.resample, p.do_flip_channel_order) == (288, 256, "bicubic", False)
        assert "from the timm pretrained_cfg" in notes
    model = mv2.from_pretrained("timm/mobilevitv2_050.cvnets_in1k", cache_dir=tmp_path / "cache", verbose=False)
    assert max_rel_error(model(nhwc(io)), io["logits"]) < TOL


def test_timm_label_names_and_pretrained_cfg_are_taken(tmp_path, fixtures_dir):
    synsets = [f"n{i:08d}" for i in range(1000)]
    config = json.loads(json.dumps(TIMM_CONFIG))
    config["label_names"] = synsets
    config["label_descriptions"] = {s: f"class number {i}" for i, s in enumerate(synsets)}
    config["pretrained_cfg"].update(crop_pct=0.9, interpolation="bilinear", input_size=[3, 224, 224])
    repo = _timm_repo(tmp_path / "r", fixtures_dir, config)
    source = load_source(repo)
    assert source["config"]["id2label"]["7"] == "class number 7"
    assert source["preprocessing"]["size"] == {"shortest_edge": 248}  # floor(224 / 0.9)
    assert source["preprocessing"]["crop_size"] == {"height": 224, "width": 224}
    assert not any("label set" in n for n in source["notes"])

    config["pretrained_cfg"]["mean"] = [0.485, 0.456, 0.406]
    (repo / "config.json").write_text(json.dumps(config))
    source = load_source(repo)
    assert source["preprocessing"] is None and "cannot express" in source["preprocessing_note"]


def test_timm_config_of_another_architecture_is_refused(tmp_path, fixtures_dir):
    repo = _timm_repo(tmp_path / "r", fixtures_dir, {**TIMM_CONFIG, "architecture": "resnet50"})
    with pytest.raises(CheckpointError, match=r"config.json: timm architecture 'resnet50'"):
        load_source(repo)


def test_bare_timm_file_assumes_timms_default_preprocessing(fixtures_dir):
    source = load_source(fixtures_dir / TIMM_FIXTURE)
    assert "preprocessing assumed" in source["preprocessing_note"] and "timm" in source["preprocessing_note"]
    assert source["preprocessing"]["do_flip_channel_order"] is False


# ============================================================ ml-cvnets files
@pytest.fixture(scope="module")
def cvnets_cls(fixtures_dir):
    return torch.load(fixtures_dir / CLS_FIXTURE, weights_only=True)


def test_cvnets_training_checkpoint_says_which_copy_was_taken(tmp_path, fixtures_dir, cvnets_cls):
    io = np.load(fixtures_dir / "cvnets_mobilevitv2_050_cls_io.npz")
    ema = dict(cvnets_cls)
    ema["classifier.1.bias"] = ema["classifier.1.bias"] + 1.0  # tell the copies apart
    path = tmp_path / "checkpoint_last.pt"
    torch.save({"epoch": 300, "model_state_dict": cvnets_cls, "ema_state_dict": ema, "best_metric": 78.1}, path)

    model = convert_checkpoint(path, verbose=False)
    assert max_rel_error(model(nhwc(io)), io["logits"]) < TOL
    notes = "\n".join(model.conversion_notes)
    assert "state dict under 'model_state_dict' (model weights" in notes
    assert "also holds 'ema_state_dict'" in notes and "prefer_ema" in notes

    model = convert_checkpoint(path, prefer_ema=True, verbose=False)
    np.testing.assert_allclose(np.asarray(model(nhwc(io))), io["logits"] + 1.0, atol=1e-3)
    assert "state dict under 'ema_state_dict' (EMA weights" in "\n".join(model.conversion_notes)


def test_cvnets_plain_state_dict_and_hub_repo(tmp_path, fixtures_dir, fake_hub):
    io = np.load(fixtures_dir / "cvnets_mobilevitv2_050_cls_io.npz")
    repo = tmp_path / "cvnets-repo"
    repo.mkdir()
    shutil.copy(fixtures_dir / CLS_FIXTURE, repo / "pytorch_model.bin")
    fake_hub[0]["someone/mobilevitv2-cvnets"] = repo
    model = mv2.from_pretrained("someone/mobilevitv2-cvnets", cache_dir=tmp_path / "c", verbose=False)
    assert max_rel_error(model(nhwc(io)), io["logits"]) < TOL
    notes = "\n".join(model.conversion_notes)
    assert "a plain state dict" in notes and "LABEL_0 .. LABEL_9" in notes  # 10 classes: no public set
    assert "preprocessing assumed" in notes and "mobilevitv2-1.0-imagenet1k-256" in notes


def test_cvnets_deeplabv3_gets_voc_labels_and_a_partial_config(fixtures_dir):
    io = np.load(fixtures_dir / "cvnets_mobilevitv2_050_deeplabv3_io.npz")
    model = convert_checkpoint(fixtures_dir / SEG_FIXTURE, verbose=False)
    assert max_rel_error(model(nhwc(io)), io["logits_head_raw"].transpose(0, 2, 3, 1)) < TOL
    assert model.config.id2label[15] == "person" and model.config.id2label[0] == "background"
    assert any("voc label set" in n for n in model.conversion_notes)
    assert model.preprocessing.crop_height == 512  # Apple's VOC processor, said to be assumed
    assert any("preprocessing assumed" in n and "voc-deeplabv3" in n for n in model.conversion_notes)

    # One field (not stored in the weights) given: the rest is still inferred and checked.
    hf_sd, config, task, fmt, notes = mv2_load(fixtures_dir / SEG_FIXTURE, {"output_stride": 8})
    assert (config["output_stride"], config["aspp_out_channels"], config["width_multiplier"]) == (8, 64, 0.5)
    assert config["id2label"]["15"] == "person" and "given config overrides: output_stride" in notes
    # An explicit id2label wins over the public set.
    names = {i: f"part{i}" for i in range(21)}
    _, config, _, _, notes = mv2_load(fixtures_dir / SEG_FIXTURE, {"id2label": names})
    assert config["id2label"]["15"] == "part15" and not any("label set" in n for n in notes)
    # A partial config that disagrees with the tensors is still refused, naming the tensor.
    with pytest.raises(CheckpointError, match="aspp"):
        mv2_load(fixtures_dir / SEG_FIXTURE, {"aspp_out_channels": 32})


def mv2_load(path, config):
    from conversion.sources import load_as_hf

    return load_as_hf(path, config=config)


# ============================================================ Hugging Face repositories
@pytest.fixture(scope="module")
def hf_classifier(tmp_path_factory):
    """A randomized transformers classifier, saved as on the hub (single file) and sharded."""
    root = tmp_path_factory.mktemp("hf")
    config = transformers.MobileViTV2Config(width_multiplier=0.5, num_labels=1000)
    model = randomize_torch_module(transformers.MobileViTV2ForImageClassification(config).eval(), 3)
    model.save_pretrained(root / "single")
    model.save_pretrained(root / "sharded", max_shard_size="1MB")
    x = np.random.RandomState(0).rand(1, 64, 64, 3).astype("float32")
    with torch.no_grad():
        ref = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).logits.numpy()
    return root, x, ref


def test_hf_repo_single_file_sharded_and_hub_id(hf_classifier, tmp_path, fake_hub):
    root, x, ref = hf_classifier
    shards = sorted(p.name for p in (root / "sharded").glob("*.safetensors"))
    assert len(shards) > 1 and (root / "sharded" / "model.safetensors.index.json").is_file()
    fake_hub[0]["apple/tiny-mobilevitv2"] = root / "sharded"
    for source in (root / "single", root / "single" / "model.safetensors", root / "sharded"):
        model = convert_checkpoint(source, verbose=False)
        assert max_rel_error(model(x), ref) < TOL, source
        notes = "\n".join(model.conversion_notes)
        assert "hf checkpoint" in notes and "config from config.json" in notes
        # transformers wrote LABEL_0 .. LABEL_999: a 1000-class head gets the ImageNet names.
        assert model.config.id2label[0] == "tench" and "imagenet1k label set" in notes
    assert f"{len(shards)} shards" in "\n".join(model.conversion_notes)
    model = mv2.from_pretrained("hf://apple/tiny-mobilevitv2", cache_dir=tmp_path / "c", verbose=False)
    assert max_rel_error(model(x), ref) < TOL
    assert "model.safetensors.index.json" in fake_hub[1][-1][1]


def test_unknown_config_json_fields_are_kept_aside_with_a_warning(hf_classifier, tmp_path):
    root, x, ref = hf_classifier
    repo = tmp_path / "repo"
    shutil.copytree(root / "single", repo)
    config = json.loads((repo / "config.json").read_text())
    config["future_field"] = {"added": "by a later transformers"}
    (repo / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="future_field"):
        model = convert_checkpoint(repo, verbose=False)
    assert max_rel_error(model(x), ref) < TOL
    assert model.conversion_summary["unknown_config_fields"] == {"future_field": {"added": "by a later transformers"}}
    assert any("kept aside" in n and "future_field" in n for n in model.conversion_notes)


@pytest.mark.parametrize(
    "field, value", [("output_stride", 7), ("n_attn_blocks", None), ("atrous_rates", 6), ("label2id", "x")]
)
def test_bad_config_json_field_names_the_file(hf_classifier, tmp_path, field, value):
    root, _, _ = hf_classifier
    repo = tmp_path / "repo"
    shutil.copytree(root / "single", repo)
    config = json.loads((repo / "config.json").read_text())
    config[field] = value
    (repo / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"repo/config.json\)") as info:
        load_source(repo)
    assert info.value.__cause__ is None


def test_shard_index_may_not_leave_its_directory(hf_classifier, tmp_path):
    root, _, _ = hf_classifier
    repo = tmp_path / "repo"
    shutil.copytree(root / "sharded", repo)
    index = json.loads((repo / "model.safetensors.index.json").read_text())
    outside = tmp_path / "outside.safetensors"
    shutil.copy(next(repo.glob("model-*.safetensors")), outside)
    for escape in ("../outside.safetensors", str(outside), "sub/../../outside.safetensors"):
        first = next(iter(index["weight_map"]))
        bad = {**index, "weight_map": {**index["weight_map"], first: escape}}
        (repo / "model.safetensors.index.json").write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match="must be a file name in the index's own directory"):
            load_source(repo)


# ============================================================ preprocessing written with exports
def test_preprocessing_travels_with_keras_and_transformers_exports(tmp_path, fixtures_dir):
    from conversion.to_transformers import export_to_transformers

    model = convert_checkpoint(fixtures_dir / CLS_FIXTURE, verbose=False)
    model.save(tmp_path / "m.keras")
    loaded = mv2.load_model(tmp_path / "m.keras")
    assert loaded.preprocessing == model.preprocessing and loaded.preprocessing.shortest_edge == 288
    export_to_transformers(model, tmp_path / "hf")
    processor = transformers.MobileViTImageProcessor.from_pretrained(tmp_path / "hf")
    assert processor.crop_size == {"height": 256, "width": 256} and processor.do_flip_channel_order


def test_cli_says_where_the_preprocessing_came_from(tmp_path, fixtures_dir, capsys):
    from keras_mobilevitv2.cli import main

    code = main(["convert", str(fixtures_dir / TIMM_FIXTURE), "--out", str(tmp_path / "o"), "--no-report"])
    out = capsys.readouterr().out
    assert code == 0
    assert "preprocessing: preprocessing assumed (the file carries none): timm's default pretrained_cfg" in out
    assert "preprocessing none" not in out


# ============================================================ label sets
def test_label_sets_are_package_data():
    imagenet, voc = label_set("imagenet1k"), label_set("voc")
    assert len(imagenet) == 1000 and imagenet[0] == "tench" and imagenet[999] == "toilet_tissue"
    assert len(voc) == 21 and voc[0] == "background" and voc[20] == "tvmonitor"
    assert default_labels("image_classification", 1000)[0] == "imagenet1k"
    assert default_labels("semantic_segmentation", 21)[0] == "voc"
    assert default_labels("image_classification", 21) == (None, None)


# ============================================================ bad files
@pytest.mark.parametrize(
    "case, match",
    [
        ("text", "not a readable PyTorch file"),
        ("int_key", "stored under the key 0 .*keys must be strings"),
        ("sparse", "is a torch.sparse_coo tensor; weights must be dense"),
        ("meta", "is on the meta device"),
        ("nan", "tensor conv_1.block.conv.weight holds 1 NaN or infinite values"),
        ("negative_var", "conv_1.block.norm.running_var .*negative"),
    ],
)
def test_bad_files_are_clean_errors_naming_file_and_tensor(tmp_path, cvnets_cls, case, match):
    path = tmp_path / f"{case}.pt"
    if case == "text":
        path.write_text("this is not a checkpoint\n")
    else:
        sd = dict(cvnets_cls)
        if case == "int_key":
            sd = {0: torch.zeros(3), **sd}
        elif case == "sparse":
            sd["conv_1.block.conv.weight"] = sd["conv_1.block.conv.weight"].to_sparse()
        elif case == "meta":
            sd["conv_1.block.conv.weight"] = torch.empty(16, 3, 3, 3, device="meta")
        elif case == "nan":
            weight = sd["conv_1.block.conv.weight"].clone()
            weight[0, 0, 0, 0] = float("nan")
            sd["conv_1.block.conv.weight"] = weight
        elif case == "negative_var":
            sd["conv_1.block.norm.running_var"] = -sd["conv_1.block.norm.running_var"]
        torch.save(sd, path)
    with pytest.raises(CheckpointError, match=match) as info:
        load_source(path)
    assert str(path) in str(info.value)
    from keras_mobilevitv2.cli import main

    assert main(["convert", str(path), "--out", str(tmp_path / "o"), "--no-report"]) == 2


def test_savedmodel_carries_the_preprocessing_it_applies(tmp_path, fixtures_dir, monkeypatch):
    """`assets.extra/preprocessor_config.json` beside the graph (the graph writing itself is stubbed: slow)."""
    import keras

    from keras_mobilevitv2.export import export_saved_model

    monkeypatch.setattr(keras.export.ExportArchive, "write_out", lambda self, path, **kw: os.makedirs(path))
    model = convert_checkpoint(fixtures_dir / TIMM_FIXTURE, verbose=False)
    export_saved_model(model, tmp_path / "sm", fold_batchnorm=False)
    written = json.loads((tmp_path / "sm" / "assets.extra" / "preprocessor_config.json").read_text())
    assert written == model.preprocessing.to_hf_dict()
    assert written["resample"] == 3 and written["do_flip_channel_order"] is False  # timm: bicubic, RGB
