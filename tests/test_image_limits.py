"""The decoded-size limit (issue 9): image sizes read from headers, refused before decoding, in
Python, in graphs and through `serving_default`; the segmenter's label map over row tiles."""

import io
import os
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_mobilevitv2.preprocessing import (
    IMAGE_FORMATS,
    ImageTooLargeError,
    decode_image,
    image_header_size,
    preprocess_image,
)
from keras_mobilevitv2.export import label_map
from keras_mobilevitv2.segmenter import resize_logits


def encode(array, fmt, **kwargs):
    out = io.BytesIO()
    Image.fromarray(array).save(out, fmt, **kwargs)
    return out.getvalue()


def bomb_png(height, width):
    """A single-colour grayscale PNG of height x width, compressed row by row (a few KB)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte 0, then black pixels
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


IMAGE = (np.random.RandomState(0).rand(37, 53, 3) * 255).astype(np.uint8)
ENCODED = {
    "jpeg": encode(IMAGE, "JPEG"),
    "jpeg progressive": encode(IMAGE, "JPEG", progressive=True),
    "jpeg with exif": encode(IMAGE, "JPEG", exif=Image.Exif() or b"Exif\x00\x00" + b"\x00" * 200),
    "png": encode(IMAGE, "PNG"),
    "gif": encode(IMAGE, "GIF"),
    "bmp": encode(IMAGE, "BMP"),
    "webp lossy": encode(IMAGE, "WEBP"),
    "webp lossless": encode(IMAGE, "WEBP", lossless=True),
    "webp alpha (VP8X)": encode(np.dstack([IMAGE, IMAGE[..., :1]]), "WEBP", exif=b"Exif\x00\x00abcd"),
}
graph_header_size = tf.function(image_header_size, input_signature=[tf.TensorSpec([], tf.string)])


@pytest.mark.parametrize("name", sorted(ENCODED))
def test_header_size_of_every_format_eagerly_and_in_graph(name):
    data = ENCODED[name]
    fmt = name.split()[0].replace("jpeg", "JPEG").replace("png", "PNG").replace("gif", "GIF")
    fmt = fmt.replace("bmp", "BMP").replace("webp", "WebP")
    for fn in (image_header_size, graph_header_size):
        index, height, width = (int(v) for v in fn(tf.constant(data)))
        assert (IMAGE_FORMATS[index], height, width) == (fmt, 37, 53)
    assert tuple(decode_image(data).shape) == (37, 53, 3)


def test_header_of_a_real_photo_and_of_non_images():
    import matplotlib

    with open(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"), "rb") as f:
        photo = f.read()
    assert [int(v) for v in graph_header_size(photo)] == [0, 600, 512]
    assert [int(v) for v in graph_header_size(bomb_png(10000, 10000))] == [1, 10000, 10000]
    for data in (b"", b"hello, world", b"\x89PNG", b"\xff\xd8\xff\xe0\x00\x10JFIF", b"BM" + b"\x00" * 10):
        fmt, height, width = (int(v) for v in graph_header_size(data))
        assert height == -1 and width == -1, data


def test_decode_refuses_over_the_limit_before_decoding():
    bomb = bomb_png(10000, 10000)
    assert len(bomb) < 200_000
    with pytest.raises(tf.errors.InvalidArgumentError, match="10000 x 10000 = 100000000 pixels, over the limit of 50000000"):
        decode_image(bomb)
    with pytest.raises(tf.errors.InvalidArgumentError, match="image 3 of the batch is 37 x 53 = 1961 pixels, over the limit of 1000"):
        tf.function(lambda d: decode_image(d, max_pixels=1000, index=3))(tf.constant(ENCODED["png"]))
    assert tuple(decode_image(ENCODED["png"], max_pixels=37 * 53).shape) == (37, 53, 3)
    assert tuple(decode_image(bomb_png(3, 4), max_pixels=None).shape) == (3, 4, 3)


def test_preprocess_image_names_the_file(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(9000, 9000))
    with pytest.raises(ImageTooLargeError, match=f"{path}: the PNG header says 9000 x 9000 = 81000000 pixels"):
        preprocess_image(path)
    with pytest.raises(ImageTooLargeError, match="over the limit of 100 pixels"):
        preprocess_image(ENCODED["jpeg"], max_pixels=100)
    assert issubclass(ImageTooLargeError, ValueError)
    assert preprocess_image(ENCODED["jpeg"], max_pixels=37 * 53).shape == (256, 256, 3)


@pytest.mark.parametrize(
    "logits_shape, size, tile_floats",
    [((1, 24, 32, 21), (375, 500), 1 << 24), ((2, 24, 32, 21), (375, 500), 5000), ((2, 34, 23, 5), (545, 368), 3000),
     ((1, 5, 7, 3), (1, 1), 10), ((1, 30, 40, 5), (12, 17), 64), ((1, 1, 1, 4), (9, 9), 7)],
)
def test_label_map_equals_argmax_of_the_full_resize(logits_shape, size, tile_floats):
    logits = tf.constant(np.random.RandomState(1).randn(*logits_shape).astype(np.float32))
    expected = tf.argmax(resize_logits(logits, size), axis=-1, output_type=tf.int32).numpy()
    np.testing.assert_array_equal(label_map(logits, size, tile_floats=tile_floats).numpy(), expected)
    graph = tf.function(lambda x: label_map(x, (tf.constant(size[0]), tf.constant(size[1])), tile_floats=tile_floats))
    np.testing.assert_array_equal(graph(logits).numpy(), expected)


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    from keras_mobilevitv2.config import MobileViTV2Config
    from keras_mobilevitv2.export import export_saved_model
    from keras_mobilevitv2.image_classifier import MobileViTV2ImageClassifier
    from keras_mobilevitv2.segmenter import MobileViTV2SemanticSegmenter

    base = tmp_path_factory.mktemp("limits")
    classifier = MobileViTV2ImageClassifier(MobileViTV2Config(width_multiplier=0.5, num_labels=10))
    segmenter = MobileViTV2SemanticSegmenter(
        MobileViTV2Config(width_multiplier=0.5, num_labels=21, output_stride=16, aspp_out_channels=32)
    )
    return {
        "classifier": export_saved_model(classifier, base / "classifier"),
        "segmenter": export_saved_model(segmenter, base / "segmenter"),
    }


# One process serves both SavedModels in turn (the classifier first): for each, the peak RSS after a
# normal photo, then after the refused batches. The peak only grows, so each model's "normal" is the
# peak of everything before it.
CHILD = textwrap.dedent(
    """
    import resource, sys
    import numpy as np, tensorflow as tf
    from skimage import data
    bomb = open(sys.argv[1], "rb").read()
    photo = tf.io.encode_jpeg(data.coffee()).numpy()  # 400 x 600
    for task, path in zip(sys.argv[2::2], sys.argv[3::2]):
        serve = tf.saved_model.load(path).signatures["serving_default"]
        outputs = serve(image_bytes=tf.constant([photo]))
        if "segmentation" in outputs:
            assert outputs["segmentation"].shape == (1, 400, 600), outputs["segmentation"].shape
        normal = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for batch, words in (
            ([photo, bomb], "image 1 of the batch is 10000 x 10000 = 100000000 pixels, over the limit of 50000000"),
            ([photo, photo, b"no image"], "image 2 of the batch: Unknown image file format"),
        ):
            try:
                serve(image_bytes=tf.constant(batch))
                print(task, "NOT REFUSED")
            except tf.errors.InvalidArgumentError as err:
                print(task, "REFUSED", words in err.message)
        print(task, "RSS_KB", normal, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
    """
)


@pytest.fixture(scope="module")
def served_bomb(saved_models, tmp_path_factory):
    """The child's output lines per task."""
    bomb = tmp_path_factory.mktemp("bomb") / "bomb.png"
    bomb.write_bytes(bomb_png(10000, 10000))  # 100 megapixels: decoded 300 MB RGB, the label map 400 MB
    argv = [str(bomb)] + [str(v) for task in ("classifier", "segmenter") for v in (task, saved_models[task])]
    result = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = {}
    for line in result.stdout.splitlines():
        task, _, rest = line.partition(" ")
        lines.setdefault(task, []).append(rest)
    return lines, result.stdout + result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["classifier", "segmenter"])
def test_bomb_through_serving_default_is_refused_with_bounded_memory(task, served_bomb):
    lines, log = served_bomb
    assert lines.get(task, []).count("REFUSED True") == 2, log
    normal_kb, after_kb = (int(v) for v in lines[task][-1].split("RSS_KB")[-1].split())
    # Refused from the header: the peak stays that of the normal photo (decoding alone is 300 MB,
    # the segmenter's full-size float logits 8.4 GB).
    assert after_kb < 1.5 * normal_kb + 100 * 1024, (normal_kb, after_kb)
