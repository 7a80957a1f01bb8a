"""Training recipes (training/recipes.py, training/recipes/*.json)."""

import json

import pytest

from training.imagenet_data import ImageNetOptions
from training.recipes import apply_overrides, available_recipes, load_recipe
from training.voc_data import VOCOptions


def test_available_recipes_load_and_build_pipeline_options():
    assert available_recipes() == ["imagenet1k_mobilevitv2", "voc_deeplabv3_mobilevitv2"]
    imagenet = ImageNetOptions.from_recipe(load_recipe("imagenet1k_mobilevitv2"), num_workers=8, worker_index=3)
    assert imagenet.batch_size == 128 and imagenet.worker_index == 3  # 1024 over 8 workers
    assert imagenet.preprocessing.shortest_edge == 288 and imagenet.preprocessing.crop_height == 256
    voc = VOCOptions.from_recipe(load_recipe("voc_deeplabv3_mobilevitv2"), num_workers=4)
    assert voc.batch_size == 32 and voc.crop_size == 512 and voc.mask_dir == "SegmentationClassAug"
    with pytest.raises(ValueError, match="not divisible by num_workers=3"):
        ImageNetOptions.from_recipe(load_recipe("imagenet1k_mobilevitv2"), num_workers=3)


def test_recipes_hold_ml_cvnets_values():
    imagenet = load_recipe("imagenet1k_mobilevitv2")
    assert imagenet["schedule"]["max_lr"] == 0.002 and imagenet["schedule"]["min_lr"] == 0.0002
    assert imagenet["schedule"]["warmup_steps"] == 20000 and imagenet["optimizer"]["weight_decay"] == 0.05
    assert imagenet["epochs"] == 300 and imagenet["data"]["global_batch_size"] == 1024
    voc = load_recipe("voc_deeplabv3_mobilevitv2")
    assert voc["schedule"]["max_lr"] == 0.0005 and voc["schedule"]["min_lr"] == 1e-6
    assert voc["epochs"] == 50 and voc["model"]["output_stride"] == 16 and voc["data"]["global_batch_size"] == 128


def test_load_recipe_from_a_path_and_unknown_names(tmp_path):
    path = tmp_path / "mine.json"
    recipe = load_recipe("imagenet1k_mobilevitv2")
    path.write_text(json.dumps({**recipe, "epochs": 3}))
    assert load_recipe(str(path))["epochs"] == 3
    with pytest.raises(ValueError, match="unknown recipe 'imagenet'; available recipes: imagenet1k_mobilevitv2"):
        load_recipe("imagenet")
    (tmp_path / "bad.json").write_text('{"name": "x"}')
    with pytest.raises(ValueError, match="lacks the fields task, model"):
        load_recipe(str(tmp_path / "bad.json"))


def test_overrides_set_typed_values_without_touching_the_original():
    recipe = load_recipe("imagenet1k_mobilevitv2")
    new = apply_overrides(
        recipe,
        [
            "schedule.max_lr=1e-3",
            "optimizer.weight_decay=0",  # an int for a float field
            "epochs=5",
            "ema.enabled=false",
            "data.random_resized_crop_scale=[0.25, 1]",
            "model.init_from=/ckpt/model.weights.h5",  # a null field takes any value
            "model.preset=mobilevitv2-0.5-imagenet1k-256",
            "seed=3",
        ],
    )
    assert new["schedule"]["max_lr"] == 1e-3 and new["epochs"] == 5 and new["ema"]["enabled"] is False
    assert new["optimizer"]["weight_decay"] == 0.0 and isinstance(new["optimizer"]["weight_decay"], float)
    assert new["data"]["random_resized_crop_scale"] == [0.25, 1.0]
    assert new["model"]["init_from"] == "/ckpt/model.weights.h5" and new["seed"] == 3
    assert new["model"]["preset"] == "mobilevitv2-0.5-imagenet1k-256"
    assert recipe["epochs"] == 300 and recipe["schedule"]["max_lr"] == 0.002


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer.lr=1e-3", r"unknown field 'optimizer.lr'; optimizer has beta_1, beta_2, .*weight_decay"),
        ("epoch=5", r"unknown field 'epoch'; the recipe has .*epochs"),
        ("epochs=2.5", r"epochs is an int, received 2.5"),
        ("epochs=five", r"epochs is an int, received 'five'"),
        ("schedule.max_lr=fast", r"schedule.max_lr is a float, received 'fast'"),
        ("ema.enabled=1", r"ema.enabled is a bool"),
        ("data.random_resized_crop_scale=[0.1]", r"random_resized_crop_scale is a list of 2"),
        ("data.random_resized_crop_scale=[0.1, true]", r"random_resized_crop_scale\[1\] is a float"),
        ("optimizer=sgd", r"optimizer is a section; set one of its fields"),
        ("epochs.value=3", r"epochs is an int, it has no field 'value'"),
        ("epochs", r"must look like field.path=value"),
    ],
)
def test_bad_overrides_fail_with_a_message_naming_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(load_recipe("imagenet1k_mobilevitv2"), [override])
