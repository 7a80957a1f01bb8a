"""The `mobilevitv2` command line: `mobilevitv2 COMMAND ...`, or `python -m keras_mobilevitv2.cli COMMAND ...`.

`main.py` dispatches to one module per subcommand (`info`, `convert`, `export`, `predict`,
`train`, `evaluate`); see it for how to add one.
"""

from keras_mobilevitv2.cli.main import SUBCOMMANDS, build_parser, main

__all__ = ["SUBCOMMANDS", "build_parser", "main"]
