"""Preprocessing against transformers' MobileViT image processor, and Python against TF graphs.

The reference is `MobileViTImageProcessorPil` (what `MobileViTImageProcessor` falls back to
without torchvision): PIL resizes, numpy crops, rescales and flips.
"""

import io
import json
import pathlib

import matplotlib.cbook
import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from PIL import Image

from keras_mobilevitv2.presets import PRESETS
from keras_mobilevitv2.preprocessing import (
    DEFAULT_PRESET,
    PreprocessingConfig,
    decode_image,
    normalize_pixels,
    preprocess_image,
    resized_size,
    tf_preprocess,
)

SKIMAGE_DATA = pathlib.Path(skimage.data.__path__[0])
PHOTOS = {
    "chelsea": SKIMAGE_DATA / "chelsea.png",  # 451 x 300 PNG
    "grace_hopper": pathlib.Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)),  # 512 x 600
    "hubble": SKIMAGE_DATA / "hubble_deep_field.jpg",  # 1000 x 872 JPEG: the one photo VOC 512 downscales
}
IMAGENET = "mobilevitv2-1.0-imagenet1k-256"
VOC = "mobilevitv2-1.0-voc-deeplabv3"
ONE_LEVEL = 1 / 255  # one grey level in [0, 1] units


def hf_processor(config):
    from transformers import MobileViTImageProcessorPil

    return MobileViTImageProcessorPil(**config.to_hf_dict())


def hf_preprocess(config, image):
    """transformers' output for one PIL image, as (H, W, C)."""
    pixels = hf_processor(config)(image, return_tensors="np")["pixel_values"][0]
    return np.asarray(pixels).transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)


def settings():
    return {
        "imagenet": PreprocessingConfig.from_preset(IMAGENET),
        "voc": PreprocessingConfig.from_preset(VOC),
        # What transformers' conversion script saved with the VOC checkpoints:
        # MobileViTImageProcessor(crop_size=512, size=512 + 32).
        "voc_544_crop_512": PreprocessingConfig(shortest_edge=544, crop_height=512, crop_width=512),
    }


def with_changes(config, **changes):
    return PreprocessingConfig.from_dict({**config.to_dict(), **changes})


@pytest.fixture(scope="module")
def photos():
    return {name: np.asarray(Image.open(path).convert("RGB")) for name, path in PHOTOS.items()}


# -- agreement with transformers ----------------------------------------------------------------

# Measured (bilinear, |ours - transformers| in [0, 1] units, mean / max; 80-100% of values identical):
#   chelsea       imagenet 288->256  0.00076 / 0.0039   voc 512 (upscale)    0.00065 / 0.0039
#   grace_hopper  imagenet 288->256  0.00057 / 0.0039   voc 512 (identity)   0       / 0
#   hubble        imagenet 288->256  0.00044 / 0.0039   voc 512 (downscale)  0.00058 / 0.0039
# Without antialias, grace_hopper 512 -> 288 is 0.0091 / 0.34 off.
@pytest.mark.parametrize("setting", ["imagenet", "voc", "voc_544_crop_512"])
@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_matches_transformers(photo, setting, photos):
    config = settings()[setting]
    expected = hf_preprocess(config, Image.open(PHOTOS[photo]))
    actual = preprocess_image(photos[photo], config)
    assert actual.shape == expected.shape
    assert actual.dtype == np.float32
    diff = np.abs(actual - expected)
    exact = np.mean(diff < 1e-6)  # equal up to the float32-vs-float64 rescale
    print(f"{photo} {setting}: mean abs diff {diff.mean():.5f}, max {diff.max():.4f}, exact {exact:.1%}")
    assert diff.mean() < 0.002
    assert diff.max() <= ONE_LEVEL + 1e-6
    # Rounding the resized pixels to integers as PIL does makes most of them identical.
    assert exact > 0.75


@pytest.mark.parametrize("photo", ["chelsea", "grace_hopper"])
def test_bicubic_matches_transformers(photo, photos):
    # PIL computes bicubic in fixed point; measured max 5 grey levels on grace_hopper.
    config = with_changes(settings()["imagenet"], resample="bicubic")
    diff = np.abs(preprocess_image(photos[photo], config) - hf_preprocess(config, Image.open(PHOTOS[photo])))
    assert diff.mean() < 0.002
    assert diff.max() <= 6 * ONE_LEVEL


def test_nearest_upscaling_matches_transformers_exactly(photos):
    # Only upscaling: downscaling, PIL's fixed-point nearest picks a neighbouring source pixel for
    # ~9% of grace_hopper's outputs where tf.image.resize picks floor((x + 0.5) * scale) exactly.
    config = with_changes(settings()["voc"], resample="nearest", do_rescale=False)
    actual = preprocess_image(photos["chelsea"], config)
    np.testing.assert_array_equal(actual, hf_preprocess(config, Image.open(PHOTOS["chelsea"])))


def test_resized_size_matches_transformers():
    from transformers.image_transforms import get_resize_output_image_size

    rng = np.random.default_rng(0)
    sizes = [(300, 451), (451, 300), (512, 512), (600, 512), (1, 1000), (1000, 1), (7, 3)]
    sizes += [tuple(s) for s in rng.integers(1, 4000, size=(300, 2))]
    heights, widths = np.array(sizes).T
    for edge in (256, 288, 512, 544):
        new_h, new_w = resized_size(heights, widths, edge)
        expected = [
            get_resize_output_image_size(
                np.zeros((h, w, 1)), edge, default_to_square=False, input_data_format="channels_last"
            )
            for h, w in sizes
        ]
        np.testing.assert_array_equal(np.stack([new_h, new_w], axis=1), np.array(expected))


@pytest.mark.parametrize("shape", [(200, 100), (250, 270), (251, 255), (300, 257), (7, 9)])
def test_center_crop_pads_and_crops_like_transformers(shape):
    # No resize and no rescale: the crop (and zero padding of a smaller image) must be exact.
    image = np.random.default_rng(1).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    config = PreprocessingConfig(crop_height=253, crop_width=256, do_resize=False, do_rescale=False)
    expected = hf_preprocess(config, Image.fromarray(image))
    np.testing.assert_array_equal(preprocess_image(image, config), expected)


# -- pixel scaling and channel order -----------------------------------------------------------


def test_normalize_pixels_flip_is_exactly_a_channel_flip():
    image = np.random.default_rng(2).integers(0, 256, size=(2, 5, 7, 3), dtype=np.uint8)
    config = PreprocessingConfig()
    flipped = normalize_pixels(image, config).numpy()
    kept = normalize_pixels(image, with_changes(config, do_flip_channel_order=False)).numpy()
    np.testing.assert_array_equal(flipped, kept[..., ::-1])
    assert not np.array_equal(flipped, kept)
    np.testing.assert_array_equal(kept, image.astype(np.float32) * np.float32(1 / 255))
    # transformers rescales in float64; float32 is within one ulp of it.
    np.testing.assert_allclose(kept, image / 255.0, rtol=1.2e-7, atol=0)
    raw = normalize_pixels(image, with_changes(config, do_rescale=False, do_flip_channel_order=False))
    np.testing.assert_array_equal(raw.numpy(), image.astype(np.float32))


def test_normalize_pixels_accepts_floats_and_rejects_other_channel_counts():
    image = np.random.default_rng(3).uniform(0, 255, size=(4, 4, 3)).astype(np.float32)
    np.testing.assert_array_equal(normalize_pixels(image).numpy(), (image * np.float32(1 / 255))[..., ::-1])
    with pytest.raises(ValueError, match=r"\(4, 4, 4\)"):
        normalize_pixels(np.zeros((4, 4, 4), np.uint8))


# -- Python and graph agree --------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["imagenet", "voc"])
def test_python_equals_graph_with_unknown_size(setting, photos):
    config = settings()[setting]
    graph = tf.function(
        lambda image: tf_preprocess(image, config), input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)]
    )
    from_bytes = tf.function(
        lambda data: tf_preprocess(decode_image(data), config), input_signature=[tf.TensorSpec([], tf.string)]
    )
    if config.do_center_crop:
        assert graph.get_concrete_function().structured_outputs.shape == (config.crop_height, config.crop_width, 3)
    for name, path in PHOTOS.items():
        expected = preprocess_image(photos[name], config)
        np.testing.assert_array_equal(graph(photos[name]).numpy(), expected)
        np.testing.assert_array_equal(from_bytes(path.read_bytes()).numpy(), preprocess_image(path, config))


def test_map_fn_over_images_of_different_sizes(photos):
    config = settings()["imagenet"]
    output = tf.TensorSpec((256, 256, 3), tf.float32)
    names = sorted(PHOTOS)

    ragged = tf.ragged.stack([photos[n] for n in names])  # (3, None, None, 3)
    batch = tf.function(lambda images: tf.map_fn(lambda x: tf_preprocess(x, config), images, fn_output_signature=output))
    result = batch(ragged).numpy()

    encoded = tf.constant([PHOTOS[n].read_bytes() for n in names])
    from_bytes = tf.function(
        lambda data: tf.map_fn(lambda b: tf_preprocess(decode_image(b), config), data, fn_output_signature=output)
    )
    result_from_bytes = from_bytes(encoded).numpy()

    for i, name in enumerate(names):
        np.testing.assert_array_equal(result[i], preprocess_image(photos[name], config))
        np.testing.assert_array_equal(result_from_bytes[i], preprocess_image(PHOTOS[name], config))


# -- decoding ----------------------------------------------------------------------------------


def _encoded(image, fmt):
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name, make_bytes",
    [
        ("grace_hopper.jpg (JPEG, bit-identical to PIL)", lambda: PHOTOS["grace_hopper"].read_bytes()),
        ("camera.png (grayscale)", lambda: (SKIMAGE_DATA / "camera.png").read_bytes()),
        ("logo.png (RGBA)", lambda: (SKIMAGE_DATA / "logo.png").read_bytes()),
        ("no_time_for_that_tiny.gif (24 frames)", lambda: (SKIMAGE_DATA / "no_time_for_that_tiny.gif").read_bytes()),
        ("chelsea as BMP", lambda: _encoded(Image.open(PHOTOS["chelsea"]), "BMP")),
        ("grayscale JPEG", lambda: _encoded(Image.open(SKIMAGE_DATA / "camera.png"), "JPEG")),
    ],
)
def test_decode_image_matches_pil(name, make_bytes):
    data = make_bytes()
    decoded = decode_image(data).numpy()
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # GIF: the first frame
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, expected)


# -- Python inputs -----------------------------------------------------------------------------


def test_preprocess_image_accepts_every_input_kind(photos):
    path = PHOTOS["chelsea"]  # PNG: every route sees the same pixels
    expected = preprocess_image(photos["chelsea"])
    assert expected.shape == (256, 256, 3)
    for x in (path, str(path), path.read_bytes(), bytearray(path.read_bytes()), Image.open(path)):
        np.testing.assert_array_equal(preprocess_image(x), expected)
    # Float pixels are resized without PIL's rounding to integers: within half a grey level.
    from_floats = preprocess_image(photos["chelsea"].astype(np.float64))
    np.testing.assert_allclose(from_floats, expected, rtol=0, atol=0.5 * ONE_LEVEL + 1e-6)
    assert not np.array_equal(from_floats, expected)
    np.testing.assert_array_equal(preprocess_image(path, IMAGENET), expected)
    assert preprocess_image(path, VOC).shape == (512, 512, 3)  # shortest edge 544, centre crop 512


def test_preprocess_image_errors():
    with pytest.raises(ValueError, match=r"cannot decode the image bytes \(19 bytes"):
        preprocess_image(b"not an image at all")
    with pytest.raises(ValueError, match=r"cannot decode"):
        preprocess_image(PHOTOS["chelsea"].read_bytes()[:100])  # truncated PNG
    with pytest.raises(ValueError, match=r"\(H, W, 3\) RGB array, received shape \(4, 5\)"):
        preprocess_image(np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match=r"received shape \(4, 5, 4\)"):
        preprocess_image(np.zeros((4, 5, 4), np.uint8))
    with pytest.raises(ValueError, match=r"received shape \(0, 5, 3\)"):
        preprocess_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 255\], received values in \[0.0, 300.0\]"):
        preprocess_image(np.linspace(0.0, 300.0, 60).reshape(4, 5, 3))
    with pytest.raises(ValueError, match=r"dtype int64"):
        preprocess_image(np.zeros((4, 5, 3), np.int64))
    with pytest.raises(TypeError, match=r"received list"):
        preprocess_image([[0, 0, 0]])
    with pytest.raises(FileNotFoundError):
        preprocess_image(PHOTOS["chelsea"].with_name("missing.png"))
    with pytest.raises(ValueError, match=r"unknown preset 'nope'"):
        preprocess_image(np.zeros((4, 5, 3), np.uint8), "nope")
    with pytest.raises(ValueError, match=r"one \(H, W, 3\) RGB image, received shape \(1, 4, 5, 3\)"):
        tf_preprocess(np.zeros((1, 4, 5, 3), np.uint8))


# -- PreprocessingConfig -----------------------------------------------------------------------


def test_default_config_is_the_imagenet_preset():
    assert PreprocessingConfig() == PreprocessingConfig.from_preset(DEFAULT_PRESET)
    assert PreprocessingConfig.from_preset("apple/" + IMAGENET) == PreprocessingConfig()
    for name, preset in PRESETS.items():
        assert PreprocessingConfig.from_preset(name) == PreprocessingConfig.from_hf_dict(preset["preprocessing"])


@pytest.mark.parametrize(
    "config",
    [
        PreprocessingConfig(),
        PreprocessingConfig.from_preset(VOC),
        PreprocessingConfig(shortest_edge=300, crop_height=224, crop_width=200, resample="bicubic",
                            do_rescale=False, do_flip_channel_order=False),
        PreprocessingConfig(resample="nearest", do_resize=False, rescale_factor=0.5),
    ],
)
def test_config_round_trips_through_transformers_and_dicts(config, tmp_path):
    processor = hf_processor(config)
    assert PreprocessingConfig.from_hf_dict(processor.to_dict()) == config
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert PreprocessingConfig.from_hf_dict(saved) == config
    assert PreprocessingConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_from_hf_dict_fills_missing_fields_with_transformers_defaults():
    from transformers import MobileViTImageProcessorPil

    transformers_defaults = PreprocessingConfig.from_hf_dict(MobileViTImageProcessorPil().to_dict())
    assert PreprocessingConfig.from_hf_dict({}) == transformers_defaults
    assert PreprocessingConfig.from_hf_dict({"do_center_crop": None}) == transformers_defaults
    assert transformers_defaults.shortest_edge == 224 and transformers_defaults.resample == "bicubic"


def test_from_hf_dict_reads_legacy_fields():
    from transformers.image_utils import PILImageResampling

    legacy = {"size": 288, "crop_size": 256, "resample": PILImageResampling.BILINEAR,
              "feature_extractor_type": "MobileViTFeatureExtractor", "do_reduce_labels": False}
    assert PreprocessingConfig.from_hf_dict(legacy) == PreprocessingConfig()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"shortest_edge": 0}, "shortest_edge=0"),
        ({"shortest_edge": True}, "shortest_edge=True"),
        ({"crop_height": 256.0}, "crop_height=256.0"),
        ({"crop_width": -1}, "crop_width=-1"),
        ({"do_resize": "yes"}, "do_resize='yes'"),
        ({"do_flip_channel_order": 1}, "do_flip_channel_order=1"),
        ({"rescale_factor": -0.1}, "rescale_factor=-0.1"),
        ({"rescale_factor": float("nan")}, "rescale_factor=nan"),
        ({"resample": "lanczos"}, "resample='lanczos'"),
    ],
)
def test_config_validation_names_field_and_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        PreprocessingConfig(**kwargs)


@pytest.mark.parametrize(
    "d, message",
    [
        ({"size": {"height": 256, "width": 256}}, "size="),
        ({"size": {"shortest_edge": 256, "longest_edge": 512}}, "size="),
        ({"crop_size": {"shortest_edge": 256}}, "crop_size="),
        ({"resample": 1}, "resample=1"),  # PIL LANCZOS
        ({"resample": 4}, "resample=4"),  # PIL BOX
        ({"size": {"shortest_edge": 0}}, "shortest_edge=0"),
    ],
)
def test_from_hf_dict_validation(d, message):
    with pytest.raises(ValueError, match=message):
        PreprocessingConfig.from_hf_dict(d)


def test_saved_model_signature_and_tf_data(tmp_path, photos):
    config = settings()["imagenet"]
    output = tf.TensorSpec((256, 256, 3), tf.float32)
    module = tf.Module()
    module.preprocess = tf.function(
        lambda data: tf.map_fn(lambda b: tf_preprocess(decode_image(b), config), data, fn_output_signature=output),
        input_signature=[tf.TensorSpec([None], tf.string)],
    )
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": module.preprocess})
    serving = tf.saved_model.load(str(tmp_path)).signatures["serving_default"]
    names = sorted(PHOTOS)
    (result,) = serving(tf.constant([PHOTOS[n].read_bytes() for n in names])).values()

    dataset = tf.data.Dataset.from_tensor_slices([str(PHOTOS[n]) for n in names])
    dataset = dataset.map(lambda path: tf_preprocess(decode_image(tf.io.read_file(path)), config))
    for i, (name, from_dataset) in enumerate(zip(names, dataset)):
        expected = preprocess_image(PHOTOS[name], config)
        np.testing.assert_array_equal(result[i].numpy(), expected)
        np.testing.assert_array_equal(from_dataset.numpy(), expected)
