"""`python -m keras_mobilevitv2.cli`: the `mobilevitv2` command."""

import sys

from keras_mobilevitv2.cli.main import main

sys.exit(main())
