"""Keeping TensorFlow's C++ logging off the user's terminal unless they ask for it (`--verbose`).

TensorFlow 2.21 writes to file descriptor 2 from C++, below Python's `sys.stderr`: the absl
"log messages before absl::InitializeLog()" banner, oneDNN and CUDA-stub notes (twice: two
shared libraries load), the CPU feature guard, and on a machine without a GPU `failed call to
cuInit: ... UNKNOWN ERROR (303)` when the devices are first listed. `TF_CPP_MIN_LOG_LEVEL` does not
reach the lines logged before absl is initialised, so `import_tensorflow` captures the descriptor
while it imports TensorFlow and lists its devices; the TFLite converter's chatter is captured the
same way (`captured_stderr`) by the export command.
"""

import contextlib
import os
import sys
import tempfile

# 2: INFO and WARNING hidden, errors still shown (TensorFlow's own levels: 0 all ... 3 fatal only).
QUIET_LOG_LEVEL = "2"


class Captured:
    """What a `captured_stderr` block wrote to file descriptor 2 (`text`, filled in when it ends)."""

    def __init__(self):
        self.text = ""

    @property
    def lines(self):
        return [line for line in self.text.splitlines() if line.strip()]


@contextlib.contextmanager
def captured_stderr(enabled=True):
    """Redirect file descriptor 2 (C and C++ writes, Python's `sys.stderr` too) to a temporary file.

    Yields a `Captured` whose `text` holds what was written once the block ends, also when it
    raises, so the caller can show it on failure. `enabled=False` (`--verbose`) captures nothing.
    """
    captured = Captured()
    if not enabled:
        yield captured
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", errors="replace")


def quiet_environment(verbose=False):
    """Set TensorFlow's C++ log level for this process before TensorFlow is imported.

    Quiet: `TF_CPP_MIN_LOG_LEVEL=2` unless the user set it. Verbose: everything (level 0).
    """
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_LOG_LEVEL)


def import_tensorflow(verbose=False):
    """Import TensorFlow and initialise its devices, its start-up lines captured unless `verbose`.

    If the import fails, what TensorFlow wrote is printed before the exception propagates.
    """
    quiet_environment(verbose)
    quiet = not verbose and "tensorflow" not in sys.modules
    captured = Captured()
    try:
        with captured_stderr(enabled=quiet) as captured:
            import tensorflow as tf

            tf.config.list_physical_devices()  # where cuInit runs, and fails on a machine without a GPU
    except BaseException:
        sys.stderr.write(captured.text)
        raise
    return tf
