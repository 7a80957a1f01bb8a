"""Writing outputs without losing anything: no silent overwrite, no half-written file.

    check_can_write([out / "model.keras"], overwrite)      # OutputExistsError unless overwrite
    with atomic_file(out / "model.tflite") as tmp:         # write tmp; renamed into place on success
        tmp.write_bytes(data)

Files land with the permissions `open()` would give them (0666 minus the umask).
"""

import contextlib
import os
import pathlib
import uuid

from keras_mobilevitv2.umask import apply_umask


class OutputExistsError(FileExistsError, ValueError):
    """An output that exists and would be replaced; the message names it and says to pass --overwrite."""


def check_can_write(paths, overwrite, hint="pass --overwrite (overwrite=True) to replace it"):
    """Raise `OutputExistsError` naming the first of `paths` that exists, unless `overwrite`."""
    if overwrite:
        return
    for path in paths:
        if os.path.lexists(path):
            raise OutputExistsError(f"{os.fspath(path)} exists; {hint}")


@contextlib.contextmanager
def atomic_file(path, overwrite=True):
    """Yield a temporary `pathlib.Path` beside `path`; on success it is renamed to `path`
    (`os.replace`, or a hard link that fails when `path` appeared meanwhile, if not `overwrite`);
    on any error it is removed, and `path` is untouched."""
    path = pathlib.Path(os.fspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden, and ending in the same name: writers that check the suffix (".keras", ".weights.h5") accept it.
    tmp = path.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        yield tmp
        apply_umask(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic, and fails if `path` exists: never replaces another's file
            except FileExistsError:
                raise OutputExistsError(f"{path} exists (written meanwhile by another process); not replaced") from None
    finally:
        if tmp.exists():
            tmp.unlink()
