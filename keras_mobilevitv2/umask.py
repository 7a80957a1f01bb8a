"""Give files written through a temporary name the permissions the user's umask asks for.

`tempfile.mkdtemp` makes directories 0700 and safetensors' `save_file` writes files 0600 (it goes
through a temporary file); renamed into place, they would keep those modes, so a TF Serving
process or a colleague running as another user could not read an export. `apply_umask` resets
them to what `open()` and `os.makedirs` give: 0666 / 0777 minus the umask.
"""

import os


def current_umask():
    """The process's umask (read by setting it and putting it back: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path):
    """chmod `path` (and, for a directory, everything under it) to the umask's default modes."""
    mask = current_umask()
    paths = [path]
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            paths += [os.path.join(root, name) for name in dirs + files]
    for item in paths:
        if os.path.islink(item):
            continue
        os.chmod(item, (0o777 if os.path.isdir(item) else 0o666) & ~mask)
