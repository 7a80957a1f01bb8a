"""Text from checkpoints and files, made safe for a terminal or a log.

Label names (`id2label`), file names and messages read from a checkpoint are somebody else's bytes:
an ESC sequence can recolour or clear a terminal, a BEL rings it, a CR overwrites the line before.
`printable` escapes every such character, as Python's `repr` would, and caps the length.
"""

MAX_LENGTH = 200


def printable(text, max_length=MAX_LENGTH):
    """`text` with control and other non-printable characters escaped (`\\x1b`, `\\x07`, `\\n`, ...),
    cut to `max_length` characters (with "..."): one safe line for a terminal or a log."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    if max_length is not None and len(text) > max_length:
        text = text[: max_length - 3] + "..."
    return text
