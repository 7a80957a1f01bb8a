"""Public label sets as data: ImageNet-1k (1000 classes) and PASCAL VOC (21), in index order.

    from keras_mobilevitv2.labels import label_set, default_labels
    label_set("imagenet1k")[1]                          # "goldfish"
    default_labels("image_classification", 1000)       # ("imagenet1k", {0: "tench", ...})

A converted checkpoint whose head has the size of one of these sets and carries no names of its
own gets these (`default_labels`), and the conversion notes say so. Sources are in each file's
`_source` field.
"""

import functools
import json
import os

_DIR = os.path.dirname(os.path.abspath(__file__))

# name -> (file, task whose head it names, number of classes)
LABEL_SETS = {
    "imagenet1k": ("imagenet1k.json", "image_classification", 1000),
    "voc": ("voc.json", "semantic_segmentation", 21),
}


@functools.lru_cache(maxsize=None)
def _read(name):
    if name not in LABEL_SETS:
        raise ValueError(f"unknown label set {name!r}; known: {', '.join(LABEL_SETS)}")
    file, _, count = LABEL_SETS[name]
    with open(os.path.join(_DIR, file), encoding="utf-8") as f:
        labels = tuple(json.load(f)["labels"])
    if len(labels) != count:
        raise ValueError(f"label set {name} ({file}) holds {len(labels)} names, expected {count}")
    return labels


def label_set(name):
    """The class names of `name` ("imagenet1k" or "voc") as a tuple, index order."""
    return _read(name)


def default_labels(task, num_labels):
    """(label set name, id2label) for a `task` head of `num_labels` classes, or (None, None)."""
    for name, (_, set_task, count) in LABEL_SETS.items():
        if set_task == task and count == num_labels:
            return name, dict(enumerate(_read(name)))
    return None, None


def is_placeholder(id2label):
    """True when `id2label` holds only transformers' generated names LABEL_0 .. LABEL_{n-1}."""
    return all(str(name) == f"LABEL_{int(i)}" for i, name in id2label.items())
