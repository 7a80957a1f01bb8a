"""The `mobilevitv2` command line as a new user meets it: help, version, quiet output, exit statuses, README."""

import os
import pathlib
import re
import stat
import subprocess
import sys

import pytest

from keras_mobilevitv2 import __version__
from keras_mobilevitv2.cli import SUBCOMMANDS, main
from keras_mobilevitv2.extras import EXTRAS, MissingExtraError, NetworkError, install_hint, require
from keras_mobilevitv2.logs import captured_stderr

REPO = pathlib.Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "keras_mobilevitv2.cli"]


def _env(**overrides):
    """This process's environment without TensorFlow's log level (conftest sets one), plus overrides."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return {**env, **overrides}


def _cli(*argv, cwd=None):
    return subprocess.run([*CLI, *argv], capture_output=True, text=True, env=_env(), cwd=cwd)


def test_help_lists_every_subcommand():
    result = _cli("--help")
    assert result.returncode == 0, result.stderr
    for name in SUBCOMMANDS:
        assert name in result.stdout
    assert "--version" in result.stdout and "--verbose" in result.stdout


@pytest.mark.parametrize(
    "command",
    [None, *SUBCOMMANDS],
)
def test_help_does_not_import_tensorflow(command):
    """`mobilevitv2 [COMMAND] --help` answers without TensorFlow (or torch): the time is printed, not asserted."""
    argv = ["--help"] if command is None else [command, "--help"]
    code = (
        "import sys, time\n"
        "start = time.perf_counter()\n"
        "from keras_mobilevitv2.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "print(f'--help in {time.perf_counter() - start:.2f} s', file=sys.stderr)\n"
        "heavy = [m for m in ('tensorflow', 'torch', 'keras') if m in sys.modules]\n"
        "assert not heavy, f'--help imported {heavy}'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    print(command, result.stderr.strip().splitlines()[-1:])
    assert result.returncode == 0, result.stderr
    assert "usage: mobilevitv2" in result.stdout


def test_version():
    result = _cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"mobilevitv2 (keras-mobilevitv2) {__version__}"


def test_tensorflow_start_up_lines_hidden_unless_verbose():
    """On this CPU-only machine TensorFlow prints the absl banner, oneDNN and cuInit lines; none by default."""
    quiet = _cli("info", "mobilevitv2-0.5-imagenet1k-256")
    assert quiet.returncode == 0, quiet.stderr
    assert "MobileViTV2ImageClassifier: 1,378,369 parameters" in quiet.stdout
    assert quiet.stderr == ""
    loud = _cli("info", "mobilevitv2-0.5-imagenet1k-256", "--verbose")
    assert loud.returncode == 0
    assert "absl::InitializeLog" in loud.stderr or "cuInit" in loud.stderr or "oneDNN" in loud.stderr, loud.stderr


def test_captured_stderr_holds_c_level_writes_also_on_failure():
    with captured_stderr() as log:
        os.write(2, b"converter: pass 1\nconverter: pass 2\n")
    assert log.lines == ["converter: pass 1", "converter: pass 2"]
    with pytest.raises(RuntimeError), captured_stderr() as log:
        os.write(2, b"about to fail\n")
        raise RuntimeError("boom")
    assert log.text == "about to fail\n"
    with captured_stderr(enabled=False) as log:
        pass
    assert log.text == ""


def test_install_hint_works_from_a_checkout_and_a_release():
    assert install_hint("hub") == 'pip install "keras-mobilevitv2[hub]"  (from a checkout: pip install -e ".[hub]")'
    with pytest.raises(ValueError, match="unknown extra 'nope'"):
        install_hint("nope")
    with pytest.raises(MissingExtraError, match=re.escape('pip install -e ".[torch]"')):
        require("no_such_module_xyz", "reading x.pt needs PyTorch", "torch")


def test_every_extra_is_declared_in_setup_cfg():
    import configparser

    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    declared = set(parser["options.extras_require"])
    assert set(EXTRAS) <= declared, set(EXTRAS) - declared
    readme = (REPO / "README.md").read_text()
    for extra in declared:
        assert f"| `{extra}` |" in readme, f"README's Install table does not describe the extra {extra}"


def test_no_message_spells_a_pip_command_by_hand():
    """Install hints go through `install_hint`: no hard-coded `pip install` in the package code."""
    offenders = []
    for package in ("keras_mobilevitv2", "conversion", "training"):
        for path in (REPO / package).rglob("*.py"):
            if path.name == "extras.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if "pip install" in line and not line.lstrip().startswith(("#", "mobilevitv2")):
                    offenders.append(f"{path.relative_to(REPO)}:{number}")
    assert not offenders, offenders


# -------------------------------------------------------------------------------- exit statuses
def _info_raising(monkeypatch, error):
    import keras_mobilevitv2.cli.info as info_cli

    def run(args):
        raise error

    monkeypatch.setattr(info_cli, "run", run)


@pytest.mark.parametrize(
    "error, phrase",
    [
        (MissingExtraError("downloading 'a/b' needs huggingface_hub", "hub"), 'pip install -e ".[hub]"'),
        (NetworkError("could not download 'a/b' from the Hugging Face hub"), "could not download 'a/b'"),
        (FileNotFoundError("model file not found: x.keras"), "model file not found: x.keras"),
    ],
)
def test_user_errors_are_one_line_exit_2(monkeypatch, capsys, error, phrase):
    _info_raising(monkeypatch, error)
    assert main(["info"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and phrase in err and err.count("\n") == 1
    with pytest.raises(type(error)):
        main(["info", "--verbose"])


def test_unexpected_errors_are_one_line_exit_1(monkeypatch, capsys):
    _info_raising(monkeypatch, RuntimeError("something\nbroke"))
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert err == "error: RuntimeError: something broke (run with --verbose for the traceback)\n"
    with pytest.raises(RuntimeError):
        main(["--verbose", "info"])


def test_offline_hub_download_is_one_line(monkeypatch, tmp_path, capsys):
    """from_pretrained of a hub id with no network: the reason in one line, exit 2 (not 105 lines of tracebacks)."""
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("Cannot reach the hub.\nCheck your connection.")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "sample:cat", "--model", "apple/mobilevitv2-1.0-imagenet1k-256"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("error: could not download 'apple/mobilevitv2-1.0-imagenet1k-256'")
    assert "Cannot reach the hub. Check your connection." in err[-1] and "Traceback" not in "\n".join(err)


def test_missing_hub_extra_names_the_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "sample:cat", "--model", "apple/mobilevitv2-1.0-imagenet1k-256"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == (
        "error: downloading 'apple/mobilevitv2-1.0-imagenet1k-256' needs huggingface_hub (or pass a local "
        'directory / file): pip install "keras-mobilevitv2[hub]"  (from a checkout: pip install -e ".[hub]")'
    )


def test_convert_without_torch_says_the_check_was_skipped(fixtures_dir, tmp_path, monkeypatch, capsys):
    """A core install (no torch / transformers): the files are written, but the exit status is not 0."""
    from conversion import report

    monkeypatch.setattr(report, "available", lambda: False)
    source = fixtures_dir / "timm_mobilevitv2_050.safetensors"
    assert main(["convert", str(source), "--out", str(tmp_path / "a")]) == 3
    err = capsys.readouterr().err
    assert "parity check was skipped: it needs torch and transformers" in err
    assert 'pip install -e ".[parity]"' in err and "--no-parity-check" in err
    assert (tmp_path / "a" / "model.keras").is_file()
    assert main(["convert", str(source), "--out", str(tmp_path / "b"), "--no-parity-check"]) == 0
    assert (tmp_path / "b" / "model.keras").is_file() and not (tmp_path / "b" / "conversion_report.json").exists()


@pytest.mark.slow
def test_convert_to_transformers_fail_is_a_non_zero_exit(tmp_path, capsys):
    """A compat="cvnets" segmenter at output stride 16: stock transformers computes something else.
    The report says FAIL, so the exit status is 1; --no-parity-check writes the files and exits 0.
    The weights file gets the user's umask, not safetensors' temporary 0600."""
    pytest.importorskip("transformers")
    from keras_mobilevitv2.config import MobileViTV2Config
    from keras_mobilevitv2.preprocessing import PreprocessingConfig
    from keras_mobilevitv2.segmenter import MobileViTV2SemanticSegmenter
    from tests.conftest import randomize_keras_model

    config = MobileViTV2Config(width_multiplier=0.5, num_labels=3, output_stride=16, aspp_out_channels=32)
    model = MobileViTV2SemanticSegmenter(config, preprocessing=PreprocessingConfig(shortest_edge=64, crop_height=64, crop_width=64))
    randomize_keras_model(model, seed=3)
    model.save(tmp_path / "seg.keras")
    old_mask = os.umask(0o022)
    try:
        assert main(["convert", "--to", "transformers", str(tmp_path / "seg.keras"), "--out", str(tmp_path / "hf")]) == 1
        out, err = capsys.readouterr()
        assert "FAIL: worst" in out and "disagree (expected: see the warnings above)" in err
        assert main(["convert", "--to", "transformers", str(tmp_path / "seg.keras"), "--out", str(tmp_path / "hf2"),
                     "--no-parity-check"]) == 0
        assert stat.S_IMODE(os.stat(tmp_path / "hf2" / "model.safetensors").st_mode) == 0o644
    finally:
        os.umask(old_mask)


def test_apply_umask(tmp_path):
    import tempfile

    from keras_mobilevitv2.umask import apply_umask

    directory = tempfile.mkdtemp(dir=tmp_path)  # 0700
    fd, file = tempfile.mkstemp(dir=directory)  # 0600
    os.close(fd)
    old_mask = os.umask(0o027)
    try:
        apply_umask(directory)
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o750
    assert stat.S_IMODE(os.stat(file).st_mode) == 0o640


def test_info_lists_presets_and_describes_one(capsys):
    assert main(["info"]) == 0
    listing = capsys.readouterr().out
    assert "mobilevitv2-1.0-imagenet1k-256" in listing and "mobilevitv2-2.0-voc-deeplabv3" in listing
    assert main(["info", "mobilevitv2-0.5-imagenet1k-256"]) == 0
    assert "MobileViTV2ImageClassifier: 1,37" in capsys.readouterr().out
    assert main(["info", "no-such-model"]) == 2


# -------------------------------------------------------------------------------- README and CI
def _readme_blocks():
    return re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)


def test_readme_starts_with_install_test_and_main_job_and_ci_follows_it():
    first = [line.split("  #")[0].strip() for line in _readme_blocks()[0].strip().splitlines()]
    assert len(first) == 3
    install, test, job = first
    assert install == 'pip install torch==2.13.0 && pip install -e ".[dev]"'
    assert test == "python -m pytest -q"
    assert job.startswith("mobilevitv2 convert ")
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines() if not line.startswith("#")]
    assert install.split(" && ") == [line for line in ci if line.startswith("pip install")]
    assert test in ci


def test_gitignore_covers_the_outputs_of_readme_commands():
    ignored = {line.strip().strip("/") for line in (REPO / ".gitignore").read_text().splitlines()}
    outputs = {"predictions"}  # predict's default --out
    for block in _readme_blocks():
        outputs |= {match.split("/")[0] for match in re.findall(r"--(?:out|model-dir) (\S+)", block)}
    outputs -= {"DIR"}
    assert outputs and outputs <= ignored, outputs - ignored


@pytest.mark.slow
def test_tflite_converter_lines_are_captured(tmp_path):
    """Even with TensorFlow's log level at 0 the converter's lines stay off stderr; --verbose shows them."""
    from keras_mobilevitv2.config import MobileViTV2Config
    from keras_mobilevitv2.image_classifier import MobileViTV2ImageClassifier
    from keras_mobilevitv2.preprocessing import PreprocessingConfig

    model = MobileViTV2ImageClassifier(
        MobileViTV2Config(width_multiplier=0.5, num_labels=3),
        preprocessing=PreprocessingConfig(shortest_edge=64, crop_height=64, crop_width=64),
    )
    model.save(tmp_path / "m.keras")
    argv = [*CLI, "export", str(tmp_path / "m.keras"), "--format", "tflite", "--out", str(tmp_path / "t")]
    quiet = subprocess.run(argv, capture_output=True, text=True, env=_env(TF_CPP_MIN_LOG_LEVEL="0"))
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    assert re.search(r"the TFLite converter's \d+ log lines are hidden; --verbose shows them", quiet.stdout)
    loud = subprocess.run([*argv, "--overwrite", "--verbose"], capture_output=True, text=True, env=_env())
    assert loud.returncode == 0, loud.stderr
    assert "Reading SavedModel" in loud.stderr and "hidden" not in loud.stdout


def test_serving_version_gets_the_umask_not_mkdtemps_0700(tmp_path, monkeypatch):
    """A TF Serving process running as another user must be able to read the version directory."""
    from keras_mobilevitv2 import export
    from keras_mobilevitv2.config import MobileViTV2Config
    from keras_mobilevitv2.image_classifier import MobileViTV2ImageClassifier

    def fake_saved_model(model, path, **kwargs):  # the layout is under test, not the SavedModel
        os.makedirs(path, exist_ok=True)
        pathlib.Path(path, "saved_model.pb").write_text("stand-in")
        return path

    monkeypatch.setattr(export, "export_saved_model", fake_saved_model)
    model = MobileViTV2ImageClassifier(MobileViTV2Config(width_multiplier=0.5, num_labels=3))
    old_mask = os.umask(0o022)
    try:
        version_dir = export.export_serving_bundle(model, str(tmp_path / "base"), "m", version=1)
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE(os.stat(version_dir).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(os.path.join(version_dir, "saved_model.pb")).st_mode) == 0o644


# -------------------------------------------------------------------------------- the CLI package
def test_every_subcommand_is_one_module_of_the_cli_package():
    """A subcommand is a module keras_mobilevitv2/cli/<name>.py with add_arguments and run, and one SUBCOMMANDS entry."""
    import importlib

    for name, (module_name, help_text) in SUBCOMMANDS.items():
        assert module_name == f"keras_mobilevitv2.cli.{name.replace('-', '_')}" and help_text
        module = importlib.import_module(module_name)
        assert callable(module.add_arguments) and callable(module.run), module_name


def test_library_modules_hold_no_argparse():
    offenders = []
    for package in ("keras_mobilevitv2", "conversion", "training"):
        for path in (REPO / package).rglob("*.py"):
            if path.parent == REPO / "keras_mobilevitv2" / "cli":
                continue
            text = path.read_text()
            if "ArgumentParser(" in text or ".add_argument(" in text or "add_subparsers(" in text:
                offenders.append(str(path.relative_to(REPO)))
    assert not offenders, offenders


@pytest.mark.parametrize(
    "argv, task, module",
    [
        (["train", "image_classification"], "image_classification", "training.train_classification"),
        (["train", "classification"], "image_classification", "training.train_classification"),
        (["train", "segmentation"], "semantic_segmentation", "training.train_segmentation"),
        (["evaluate", "--task", "segmentation"], "semantic_segmentation", None),
        (["evaluate", "--task", "image_classification"], "image_classification", None),
    ],
)
def test_train_and_evaluate_take_the_task_names_and_their_old_spellings(argv, task, module):
    from keras_mobilevitv2.cli.main import parse_args
    from keras_mobilevitv2.tasks import canonical_task

    options = ["--data-dir", "d", "--model-dir", "m"] if argv[0] == "train" else ["--data-dir", "d", "--model", "m.keras"]
    _, args = parse_args([*argv, *options])
    assert canonical_task(args.task, aliases=True) == task
    if module is not None:
        assert args._training_module == module


def test_evaluate_with_the_old_spelling_runs_the_same_evaluation(monkeypatch, tmp_path, capsys):
    """`evaluate --task classification` and `--task image_classification` evaluate and report alike."""
    from keras_mobilevitv2.cli import evaluate as cli_evaluate
    from keras_mobilevitv2.cli.main import parse_args
    from training import evaluate, run

    monkeypatch.setattr(run, "load_pretrained", lambda name: name)
    monkeypatch.setattr(evaluate, "count_images", lambda *args: 2)
    monkeypatch.setattr(evaluate, "classification_eval_dataset", lambda model, *args: f"dataset of {model}")
    monkeypatch.setattr(evaluate, "evaluate_classification", lambda model, dataset, total: {"top1": 0.5, "top5": 1.0, "images": total})
    printed = []
    for spelling in ("classification", "image_classification"):
        _, args = parse_args(["evaluate", "--task", spelling, "--data-dir", str(tmp_path), "--model", "m.keras"])
        assert cli_evaluate.run(args) == 0
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1] == "top-1 50.00%  top-5 100.00%  (2 images)\n"
