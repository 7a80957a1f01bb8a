"""Fine-tuning on your own data from the command line: it starts, it learns, and it fails safe.

The end-to-end runs use only the options a new user would type (--data-dir, --model-dir, --width,
--image-size, --epochs, --batch-size) on small folders of real photographs, and compare the
exported model with the untrained one. The fail-safe tests check the exit status and the one
`error:` line of each mistake.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests import datasets

ENV = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3", "HF_HUB_OFFLINE": "1"}


def _photos():
    """{class: [photographs]}: different photos for different classes."""
    import matplotlib
    import skimage.data

    hopper = np.asarray(Image.open(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")).convert("RGB"))
    return {
        "cat": [skimage.data.chelsea()],
        "coffee": [skimage.data.coffee()],
        "people": [skimage.data.astronaut(), hopper],
    }


def make_photo_folder(root, train_per_class=16, val_per_class=6, size=96, seed=0, classes=None):
    """root/{train,val}/<class>/<i>.jpg: random crops (55-90% of the side) and flips of each class's photos."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for name in classes or photos:
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                picture = photos[name][i % len(photos[name])]
                h, w = picture.shape[:2]
                scale = rng.uniform(0.55, 0.9)
                ch, cw = int(h * scale), int(w * scale)
                top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
                crop = picture[top : top + ch, left : left + cw]
                if rng.random() < 0.5:
                    crop = crop[:, ::-1]
                image = Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BICUBIC)
                image.save(os.path.join(folder, f"{name}_{i}.jpg"), quality=90)
    return root


def _run(module, *argv, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, argv)], capture_output=True, text=True, env=ENV, timeout=timeout
    )


def _train(task, *argv):
    return _run(f"training.train_{task}", *argv)


def _train_in_process(task, argv, capsys):
    """What `python -m training.train_<task> argv` exits with, run in this process: (status, stderr)."""
    import importlib

    capsys.readouterr()
    status = importlib.import_module(f"training.train_{task}").main([str(a) for a in argv])
    return status, capsys.readouterr().err


def _error_line(result):
    stderr = result if isinstance(result, str) else result.stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


# ------------------------------------------------------------------------------ --help
@pytest.mark.parametrize("module", ["training.train_classification", "training.train_segmentation", "training.evaluate"])
def test_help_builds_its_parser_without_tensorflow(module):
    code = (
        "import sys, contextlib, io\n"
        f"import {module} as m\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        "        m.main(['--help'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0\n"
        "assert '--data-dir' in out.getvalue()\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported for --help'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------ end to end
def _untrained_top1(data_dir, trained):
    """The top-1 of the same architecture with its initial weights, evaluated the same way."""
    from keras_mobilevitv2.image_classifier import MobileViTV2ImageClassifier
    from training.evaluate import evaluate

    model = MobileViTV2ImageClassifier(trained.config, preprocessing=trained.preprocessing)
    return evaluate(model, "image_classification", data_dir)["top1"]


@pytest.mark.slow
def test_fine_tuning_a_photo_folder_learns_and_exports_what_it_learned(tmp_path):
    import tensorflow as tf

    from training.run import load_pretrained
    from training.evaluate import evaluate

    data = make_photo_folder(str(tmp_path / "photos"))
    model_dir = tmp_path / "run"
    result = _train(
        "classification", "--data-dir", data, "--model-dir", model_dir, "--width", "0.5", "--image-size", "64",
        "--epochs", "8", "--batch-size", "12",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout
    print(log)
    assert "3 labels from the class folders" in log
    assert "total steps 32 (8 epochs x 4 steps), warmup steps 7, peak LR 0.002" in log
    assert "batch: 12 images per step" in log
    assert "step 32/32" in log and "images/s" in log and "ETA" in log  # plain progress lines off a terminal
    assert "exporting the " in log

    model = load_pretrained(str(model_dir / "model.keras"))
    assert model.config.num_labels == 3 and model.config.image_size == 64
    assert (model.preprocessing.crop_height, model.preprocessing.shortest_edge) == (64, 72)  # round(64 * 288 / 256)
    held_out = evaluate(model, "image_classification", data)["top1"]
    untrained = _untrained_top1(data, model)
    print(f"held-out top-1 {held_out:.3f}, untrained {untrained:.3f}")
    assert held_out >= 0.6 and held_out > untrained + 0.2  # chance is 1/3

    metrics = json.loads((model_dir / "eval_metrics.json").read_text())
    assert metrics["exported"] in ("EMA", "raw") and metrics["top1"] == pytest.approx(held_out)
    assert metrics["top1"] == max(metrics["candidates"].values())

    # The served model crops as the .keras file does and predicts the same classes.
    served = tf.saved_model.load(str(model_dir / "serving" / "mobilevitv2_classification" / "1"))
    path = os.path.join(data, "val", "cat", "cat_0.jpg")
    with open(path, "rb") as f:
        out = served.signatures["serving_default"](image_bytes=tf.constant([f.read()]))
    from keras_mobilevitv2.preprocessing import preprocess_image

    pixels = preprocess_image(np.asarray(Image.open(path).convert("RGB")), model.preprocessing)[None]
    assert out["top_k_labels"].numpy()[0, 0].decode() == model.config.id2label[int(np.argmax(model.predict(pixels, verbose=0)))]


@pytest.mark.slow
def test_fine_tuning_a_stock_voc2012_tree_beats_the_untrained_model(tmp_path):
    from keras_mobilevitv2.segmenter import MobileViTV2SemanticSegmenter
    from training.run import load_pretrained
    from training.evaluate import evaluate

    voc = tmp_path / "VOC2012"
    datasets.make_voc(str(voc), num_train=4, num_val=1, sbd=False)  # no train_aug, no SegmentationClassAug
    model_dir = tmp_path / "run"
    result = _train(
        "segmentation", "--data-dir", voc, "--model-dir", model_dir, "--width", "0.5", "--image-size", "96",
        "--epochs", "10", "--batch-size", "4", "--init", "none", "--no-export",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(result.stdout)
    assert "training on the stock VOC2012 train list with SegmentationClass masks" in result.stdout
    assert "21 labels" in result.stdout
    model = load_pretrained(str(model_dir / "model.keras"))
    assert model.preprocessing.shortest_edge == 96 and model.config.image_size == 96
    trained = evaluate(model, "semantic_segmentation", str(voc))["mean_iou"]
    untrained = evaluate(MobileViTV2SemanticSegmenter(model.config, preprocessing=model.preprocessing), "semantic_segmentation", str(voc))["mean_iou"]
    print(f"mIoU {trained:.3f}, untrained {untrained:.3f}")
    assert trained > untrained


# ------------------------------------------------------------------------------ fail-safes
def test_a_single_class_folder_is_refused(tmp_path):
    data = make_photo_folder(str(tmp_path / "one"), 2, 1, size=32, classes=["cat"])
    result = _train("classification", "--data-dir", data, "--model-dir", tmp_path / "run", "--width", "0.5")
    assert result.returncode == 2
    assert "at least 2 classes" in _error_line(result)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num-labels", "5"], "has 3 class folders but 5 labels were given"),
        (["--accumulate", "auto"], "--accumulate auto needs --batch-size"),
        (["--set", "optimizer.weight_decay=x"], "optimizer.weight_decay is a float"),
        (["--recipe", "no_such_recipe"], "unknown recipe 'no_such_recipe'"),
        (["--batch-size", "64"], "48 training images make no batch of 64"),
    ],
)
def test_user_mistakes_are_one_error_line_and_exit_status_2(tmp_path, argv, message, capsys):
    """In this process (the exit status is `main`'s return value); the single-class test above runs the module."""
    data = make_photo_folder(str(tmp_path / "photos"), 16, 1, size=32)
    status, stderr = _train_in_process("classification", ["--data-dir", data, "--model-dir", tmp_path / "run", "--width", "0.5", *argv], capsys)
    assert status == 2, stderr[-2000:]
    assert message in _error_line(stderr)
    assert not (tmp_path / "run").exists()


def test_an_init_that_needs_the_unreachable_hub_fails_before_any_work(tmp_path, capsys):
    voc = tmp_path / "VOC2012"
    datasets.make_voc(str(voc), num_train=1, num_val=1)
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # conftest
    status, stderr = _train_in_process("segmentation", ["--data-dir", voc, "--model-dir", tmp_path / "run", "--width", "0.5"], capsys)
    assert status == 2
    line = _error_line(stderr)
    assert "mobilevitv2-0.5-imagenet1k-256" in line and "hub is offline" in line and "--init /path/model.keras" in line
    assert not (tmp_path / "run").exists()


def test_a_mask_value_outside_the_classes_names_the_mask_file(tmp_path):
    voc = tmp_path / "VOC2012"
    samples = datasets.make_voc(str(voc), num_train=1, num_val=1)
    bad_id = sorted(samples)[0]
    labels = samples[bad_id][1].copy()
    labels[:5, :5] = 37
    datasets.save_index_png(str(voc / "SegmentationClass" / f"{bad_id}.png"), labels)
    result = _train(
        "segmentation", "--data-dir", voc, "--model-dir", tmp_path / "run", "--width", "0.5", "--init", "none",
        "--image-size", "64", "--batch-size", "1", "--epochs", "1", "--no-export", "--set", "model.aspp_out_channels=32",
    )
    assert result.returncode == 2, result.stderr[-3000:]
    line = _error_line(result)
    assert f"{bad_id}.png" in line and "[37]" in line and "ignore index 255" in line


SMALL_RUN = ["--width", "0.5", "--image-size", "32", "--batch-size", "8", "--checkpoint-every", "1", "--log-every", "1"]


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_and_exports_nothing(tmp_path):
    data = make_photo_folder(str(tmp_path / "photos"), 8, 2, size=48)
    model_dir = tmp_path / "run"
    result = _train(
        "classification", "--data-dir", data, "--model-dir", model_dir, *SMALL_RUN, "--epochs", "3",
        "--set", "schedule.max_lr=1e30", "--set", "schedule.warmup_init_lr=1e30", "--set", "optimizer.global_clipnorm=1e30",
    )
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    line = _error_line(result)
    assert "nothing was exported" in line and "last good checkpoint" in line
    assert not (model_dir / "model.keras").exists() and not (model_dir / "serving").exists()
    assert not (model_dir / "eval_metrics.json").exists()


@pytest.mark.slow
def test_a_resume_that_disagrees_with_the_checkpoints_fails_naming_the_field(tmp_path, capsys):
    data = make_photo_folder(str(tmp_path / "photos"), 8, 2, size=48)
    model_dir = tmp_path / "run"
    first = _train("classification", "--data-dir", data, "--model-dir", model_dir, *SMALL_RUN, "--epochs", "1", "--no-export")
    assert first.returncode == 0, first.stderr[-3000:]
    before = {name: os.path.getmtime(os.path.join(root, name)) for root, _, names in os.walk(model_dir) for name in names}
    rest = SMALL_RUN[4:]  # after --width 0.5 --image-size 32
    assert SMALL_RUN[:4] == ["--width", "0.5", "--image-size", "32"]
    for argv, field in ((["--width", "0.75", "--image-size", "32"], "width 0.5, this run has width 0.75"),
                        (["--width", "0.5", "--image-size", "48"], "image size 32, this run has image size 48")):
        argv = ["--data-dir", data, "--model-dir", model_dir, *argv, *rest, "--epochs", "2", "--no-export"]
        status, stderr = _train_in_process("classification", argv, capsys)  # refused before any work: in this process
        assert status == 2
        assert field in _error_line(stderr)
    after = {name: os.path.getmtime(os.path.join(root, name)) for root, _, names in os.walk(model_dir) for name in names}
    assert after == before  # nothing in the model directory was touched


def test_evaluate_mistakes_are_one_error_line(tmp_path):
    data = make_photo_folder(str(tmp_path / "photos"), 1, 1, size=32)
    result = _run("training.evaluate", "--model", tmp_path / "missing.keras", "--data-dir", data, "--task", "classification")
    assert result.returncode == 2
    assert "missing.keras" in _error_line(result)
    result = _run("training.evaluate", "--model", tmp_path / "m.keras", "--data-dir", tmp_path / "nowhere", "--task", "classification")
    assert result.returncode == 2
    assert "nowhere is not a directory" in _error_line(result)


def test_an_init_whose_download_fails_is_a_user_error_saying_how_to_pass_a_file(monkeypatch):
    """Online but the download fails (no route, unknown repo): the hub's reason and how to pass a local file."""
    from keras_mobilevitv2.hub import HubError
    from training import run as cli

    def unreachable(name):
        raise HubError(f"could not download {name!r} from the Hugging Face hub: the hub was unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(cli, "load_pretrained", unreachable)
    with pytest.raises(cli.UserError, match=r"could not download 'apple/x'.*--init /path/model.keras"):
        cli.load_init("apple/x")
