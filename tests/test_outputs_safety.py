"""Nothing is lost or overwritten: serving versions claimed atomically (two real processes at once),
leftovers of killed exports removed, existing outputs refused without --overwrite, labels made safe
for a terminal."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from keras_mobilevitv2 import export as export_module
from keras_mobilevitv2.cli import main
from keras_mobilevitv2.outputs import OutputExistsError, atomic_file, check_can_write
from keras_mobilevitv2.text import printable

REPO = pathlib.Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- labels
def test_printable_escapes_control_characters_and_caps_the_length():
    assert printable("cat\x1b[2J\x07\r\n") == "cat\\x1b[2J\\x07\\r\\n"
    assert printable("tabby, tabby cat") == "tabby, tabby cat"
    assert printable("é 猫") == "é 猫"  # printable non-ASCII stays
    long = printable("x" * 500)
    assert len(long) == 200 and long.endswith("...")


@pytest.fixture(scope="module")
def hostile_classifier(tmp_path_factory):
    from keras_mobilevitv2.config import MobileViTV2Config
    from keras_mobilevitv2.image_classifier import MobileViTV2ImageClassifier

    labels = {0: "cat\x1b]0;pwned\x07", 1: "dog\x1b[2J"}
    model = MobileViTV2ImageClassifier(MobileViTV2Config(width_multiplier=0.5, id2label=labels))
    path = tmp_path_factory.mktemp("hostile") / "hostile.keras"
    model.save(path)
    return path


def test_info_prints_no_escape_bytes_from_labels(hostile_classifier, capsys):
    assert main(["info", str(hostile_classifier)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "cat\\x1b]0;pwned\\x07" in out


# --------------------------------------------------------------------------- serving versions
# One exporter process; the parent runs two at once. Each builds its model, says it is ready, then
# for each round waits for the parent's start signal and exports: round "auto" into base/m with the
# next free version, round "explicit" version 7 into base7/m. A slow stand-in for the SavedModel
# writer keeps both exports of a round in flight at once.
CONCURRENT_EXPORT = textwrap.dedent(
    """
    import os, pathlib, sys, time
    from keras_mobilevitv2 import export
    from keras_mobilevitv2.config import MobileViTV2Config
    from keras_mobilevitv2.image_classifier import MobileViTV2ImageClassifier

    root, tag = pathlib.Path(sys.argv[1]), sys.argv[2]

    def slow_export(model, path, **kwargs):
        os.makedirs(path, exist_ok=True)
        time.sleep(1.5)  # both exports are in flight at once
        pathlib.Path(path, "saved_model.pb").write_text(tag)
        return path

    export.export_saved_model = slow_export
    export._write_warmup = lambda *args: None
    model = MobileViTV2ImageClassifier(MobileViTV2Config(width_multiplier=0.5, num_labels=3))
    (root / f"ready-{tag}").write_text("")
    for round_, base, version in (("auto", root / "base", None), ("explicit", root / "base7", 7)):
        while not (root / f"go-{round_}").exists():
            time.sleep(0.01)
        try:
            print(round_, "exported", export.export_serving_bundle(model, base, "m", version=version, warmup_images=[b"x"]), flush=True)
        except export.OutputExistsError if hasattr(export, "OutputExistsError") else FileExistsError as err:
            print(round_, "refused:", err, flush=True)
        (root / f"done-{round_}-{tag}").write_text("")
    """
)


def _wait_for(paths, process_list, seconds=300):
    import time

    deadline = time.monotonic() + seconds
    while not all(path.exists() for path in paths):
        for p in process_list:  # one that has written its last file may already have exited, with 0
            assert p.poll() in (None, 0), f"an exporter failed:\n{p.stdout.read()}\n{p.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"not within {seconds} s: {[str(p) for p in paths if not p.exists()]}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def two_concurrent_exporters(tmp_path_factory):
    """Two exporter processes, both rounds; (root, {round: [output line of each process]})."""
    root = tmp_path_factory.mktemp("concurrent")
    script = root / "export_one.py"
    script.write_text(CONCURRENT_EXPORT)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen([sys.executable, str(script), str(root), tag], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for tag in "ab"
    ]
    try:
        _wait_for([root / f"ready-{tag}" for tag in "ab"], procs)  # both have imported TensorFlow
        for round_ in ("auto", "explicit"):
            (root / f"go-{round_}").write_text("go")
            _wait_for([root / f"done-{round_}-{tag}" for tag in "ab"], procs)
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert [p.returncode for p in procs] == [0, 0], outputs
    lines = {"auto": [], "explicit": []}
    for out, _ in outputs:
        for line in out.splitlines():
            round_, _, rest = line.partition(" ")
            lines[round_].append(rest)
    return root, lines


@pytest.mark.slow
def test_two_concurrent_exports_get_two_versions(two_concurrent_exporters):
    root, lines = two_concurrent_exporters
    assert all(line.startswith("exported ") for line in lines["auto"]) and len(lines["auto"]) == 2, lines
    model_dir = root / "base" / "m"
    assert sorted(os.listdir(model_dir)) == ["1", "2"]  # no claim or temporary directory left
    tags = sorted((model_dir / v / "saved_model.pb").read_text() for v in ("1", "2"))
    assert tags == ["a", "b"]  # both models are there: neither replaced the other
    assert "name: \"m\"" in (root / "base" / "models.config").read_text()
    # The labels are chosen under the models.config lock: one export is stable, the other the canary.
    labels = export_module.version_labels(root / "base", "m")
    assert labels in ({"stable": 1, "canary": 2}, {"stable": 2, "canary": 1})


@pytest.mark.slow
def test_two_concurrent_exports_of_one_explicit_version_one_is_refused(two_concurrent_exporters):
    root, lines = two_concurrent_exporters
    assert sorted(line.split()[0] for line in lines["explicit"]) == ["exported", "refused:"], lines
    refused = next(line for line in lines["explicit"] if line.startswith("refused:"))
    assert "/m/7" in refused
    winner = next(line for line in lines["explicit"] if line.startswith("exported "))
    model_dir = root / "base7" / "m"
    assert sorted(os.listdir(model_dir)) == ["7"]
    assert (model_dir / "7" / "saved_model.pb").read_text() in ("a", "b")
    assert winner.strip().endswith("/m/7")


@pytest.fixture
def no_warmup(monkeypatch):
    monkeypatch.setattr(export_module, "_write_warmup", lambda *args: None)


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_version_claimed_by_a_running_export_is_skipped_or_refused(tmp_path, no_warmup, monkeypatch):
    from keras_mobilevitv2.config import MobileViTV2Config
    from keras_mobilevitv2.image_classifier import MobileViTV2ImageClassifier

    monkeypatch.setattr(
        export_module, "export_saved_model",
        lambda model, path, **kwargs: pathlib.Path(path, "saved_model.pb").write_text("new") and path,
    )
    model = MobileViTV2ImageClassifier(MobileViTV2Config(width_multiplier=0.5, num_labels=3))
    model_dir = tmp_path / "m"
    (model_dir / ".claim-1").mkdir(parents=True)  # a live export (this process) is writing version 1
    (model_dir / ".claim-1" / "owner").write_text(export_module._owner_tag())
    assert export_module.export_serving_bundle(model, tmp_path, "m", warmup_images=[b"x"]).endswith("/m/2")
    with pytest.raises(OutputExistsError, match="another export is writing"):
        export_module.export_serving_bundle(model, tmp_path, "m", version=1, warmup_images=[b"x"])
    with pytest.raises(OutputExistsError, match="exists; pass --overwrite"):
        export_module.export_serving_bundle(model, tmp_path, "m", version=2, warmup_images=[b"x"])
    assert sorted(os.listdir(model_dir)) == [".claim-1", "2"]


def test_leftovers_of_killed_exports_are_removed_and_live_ones_kept(tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    host = export_module._owner_tag().split("-", 1)[1]
    dead, live = _dead_pid(), os.getpid()
    stale = [model_dir / f".tmp-3-{dead}-{host}-abc", model_dir / f".old-2-{dead}-{host}-def", model_dir / ".claim-3"]
    kept = [model_dir / f".tmp-4-{live}-{host}-ghi", model_dir / ".claim-4", model_dir / "1"]
    for path in stale + kept:
        path.mkdir()
    (model_dir / ".claim-3" / "owner").write_text(f"{dead}-{host}\n")
    (model_dir / ".claim-4" / "owner").write_text(f"{live}-{host}\n")
    removed = export_module.remove_stale_entries(model_dir)
    assert sorted(removed) == sorted(map(str, stale))
    assert sorted(os.listdir(model_dir)) == sorted(p.name for p in kept)


def test_models_config_that_is_not_one_is_a_clean_error(tmp_path):
    (tmp_path / "models.config").write_text("this is { not a config")
    with pytest.raises(ValueError, match="not a TF Serving model config"):
        export_module.update_models_config(str(tmp_path), "m", "/srv/m")
    assert (tmp_path / "models.config").read_text() == "this is { not a config"


# --------------------------------------------------------------------------- existing outputs
def test_check_can_write_and_atomic_file(tmp_path):
    target = tmp_path / "out.bin"
    check_can_write([target], overwrite=False)
    with atomic_file(target) as tmp:
        tmp.write_bytes(b"one")
    assert target.read_bytes() == b"one"
    with pytest.raises(OutputExistsError, match="out.bin exists; pass --overwrite"):
        check_can_write([target], overwrite=False)
    with pytest.raises(RuntimeError):  # a crash mid-write leaves the old file and no temporary
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"one" and os.listdir(tmp_path) == ["out.bin"]
    with pytest.raises(OutputExistsError, match="another process"):
        with atomic_file(target, overwrite=False) as tmp:
            tmp.write_bytes(b"two")
    assert target.read_bytes() == b"one" and os.listdir(tmp_path) == ["out.bin"]


@pytest.fixture(scope="module")
def converted(fixtures_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted")
    source = fixtures_dir / "timm_mobilevitv2_050.safetensors"
    assert main(["convert", str(source), "--out", str(out), "--no-parity-check"]) == 0
    return source, out


def test_convert_refuses_to_replace_a_model_keras(converted, capsys):
    source, out = converted
    before = (out / "model.keras").read_bytes()
    capsys.readouterr()
    assert main(["convert", str(source), "--out", str(out), "--no-parity-check"]) == 2
    err = capsys.readouterr().err
    assert "model.keras exists; pass --overwrite" in err and err.count("\n") == 1
    assert (out / "model.keras").read_bytes() == before
    assert main(["convert", str(source), "--out", str(out), "--no-parity-check", "--overwrite"]) == 0
    assert sorted(os.listdir(out)) == ["model.keras", "model.weights.h5"]  # no temporaries left


def test_convert_to_transformers_refuses_a_directory_holding_a_checkpoint(converted, tmp_path, capsys):
    _, out = converted
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    argv = ["convert", "--to", "transformers", str(out / "model.keras"), "--out", str(hf), "--no-parity-check"]
    assert main(argv) == 2
    assert "config.json exists; pass --overwrite" in capsys.readouterr().err
    assert json.loads((hf / "config.json").read_text()) == {"model_type": "resnet"}
    assert not (hf / "model.safetensors").exists()
    assert main(argv + ["--overwrite"]) == 0
    assert json.loads((hf / "config.json").read_text())["model_type"] == "mobilevitv2"
    assert not [name for name in os.listdir(hf) if name.startswith(".")]


def test_export_tflite_api_refuses_an_existing_file(converted, tmp_path):
    from keras_mobilevitv2.saving import load_model

    model = load_model(converted[1] / "model.keras")
    target = tmp_path / "m.tflite"
    target.write_bytes(b"someone else's model")
    with pytest.raises(OutputExistsError, match="m.tflite exists"):
        export_module.export_tflite(model, target, input_size=(64, 64))
    assert target.read_bytes() == b"someone else's model"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--name", "../escape"], "--name must be letters"),
        (["--name", "a/b"], "--name must be letters"),
        (["--version", "0"], "must be a positive integer"),
        (["--version", "abc"], "must be a positive integer"),
    ],
)
def test_export_cli_bad_names_and_versions_are_one_line_errors(converted, tmp_path, capsys, extra, message):
    argv = ["export", str(converted[1] / "model.keras"), "--format", "serving", "--out", str(tmp_path)] + extra
    with pytest.raises(SystemExit) if extra[0] == "--version" else _no_raise():
        assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "escape").exists() and not (tmp_path / "a").exists()


def test_export_cli_out_that_is_a_file(converted, tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("x")
    assert main(["export", str(converted[1] / "model.keras"), "--format", "serving", "--out", str(out)]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
