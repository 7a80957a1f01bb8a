"""The named MobileViTV2 variants, as data.

Names follow Apple's checkpoints on the Hugging Face hub (`apple/<name>`). Each preset is a set
of `MobileViTV2Config` overrides, the task its head serves, and its preprocessing settings (the
transformers `MobileViTImageProcessor` fields). Widths come from `width_multiplier` alone, through
`config.stage_widths`.
"""

WIDTHS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)

IMAGENET_NUM_LABELS = 1000
VOC_NUM_LABELS = 21

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


def _width_name(width):
    return f"{width:g}" if width != int(width) else f"{width:.1f}"


def _imagenet_preset(width, image_size):
    return {
        "task": "image_classification",
        "config": {"width_multiplier": width, "image_size": image_size, "num_labels": IMAGENET_NUM_LABELS},
        # MobileViTImageProcessor of Apple's 256 checkpoints: shortest edge 288, centre crop 256.
        "preprocessing": {
            "size": {"shortest_edge": image_size + 32},
            "crop_size": {"height": image_size, "width": image_size},
            "do_center_crop": True,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_flip_channel_order": True,
            "resample": "bilinear",
        },
    }


def _voc_preset(width):
    return {
        "task": "semantic_segmentation",
        "config": {
            "width_multiplier": width,
            "image_size": 512,
            "output_stride": 16,
            "aspp_out_channels": 512,
            # ml-cvnets config/segmentation/pascal_voc/deeplabv3_mobilevitv2.yaml
            "atrous_rates": [6, 12, 18],
            "aspp_dropout_prob": 0.1,
            "id2label": dict(enumerate(VOC_CLASSES)),
        },
        # transformers' conversion script saves MobileViTImageProcessor(crop_size=512, size=512 + 32)
        "preprocessing": {
            "size": {"shortest_edge": 544},
            "crop_size": {"height": 512, "width": 512},
            "do_center_crop": True,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_flip_channel_order": True,
            "resample": "bilinear",
        },
    }


PRESETS = {}
for _w in WIDTHS:
    PRESETS[f"mobilevitv2-{_width_name(_w)}-imagenet1k-256"] = _imagenet_preset(_w, 256)
    PRESETS[f"mobilevitv2-{_width_name(_w)}-voc-deeplabv3"] = _voc_preset(_w)
del _w


def get_preset(name):
    """The preset dict of `name` (also accepted with an `apple/` prefix)."""
    key = name[len("apple/"):] if name.startswith("apple/") else name
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[key]
