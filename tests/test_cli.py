import subprocess
import sys

from keras_mobilevitv2.cli import SUBCOMMANDS, main


def test_help_lists_every_subcommand():
    out = subprocess.run(["mobilevitv2", "--help"], capture_output=True, text=True, check=True).stdout
    for name in SUBCOMMANDS:
        assert name in out


def test_help_does_not_import_tensorflow():
    code = "import sys; from keras_mobilevitv2.cli import main; main(['--help'])"
    code += "\nassert 'tensorflow' not in sys.modules, 'mobilevitv2 --help imported tensorflow'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_info_lists_presets_and_describes_one(capsys):
    assert main(["info"]) == 0
    listing = capsys.readouterr().out
    assert "mobilevitv2-1.0-imagenet1k-256" in listing and "mobilevitv2-2.0-voc-deeplabv3" in listing
    assert main(["info", "mobilevitv2-0.5-imagenet1k-256"]) == 0
    assert "MobileViTV2ImageClassifier: 1,37" in capsys.readouterr().out
    assert main(["info", "no-such-model"]) == 2
