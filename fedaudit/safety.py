"""Two small rules for what clients control and what the run writes.

* ``clean_text``: the one sanitizer for untrusted strings (client text, client ids, labels,
  reasons that quote client data). It runs before anything reaches a terminal, Markdown or
  HTML: escape sequences (CSI, OSC such as a terminal-title change, and the other ESC forms)
  go first, whole, then every remaining C0/C1 control character except tab, and the Unicode
  bidi overrides that make text read differently from what it holds. Line breaks become
  spaces, so a client cannot start a new table row or log line.
* ``write_private``: every file of a run directory is written to a unique temporary file in
  the target directory (mode 0600 from ``tempfile.mkstemp``), flushed and renamed over the
  target, so a reader never sees half a file and two writers never share a temporary name.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

#: ESC-introduced sequences (ECMA-48): CSI ``ESC [ params final``, OSC/DCS/PM/APC strings ended
#: by BEL or ``ESC \``, and two-byte escapes; the single-byte C1 CSI (0x9B) form too.
_ESCAPE_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|\x1b[\]PX^_][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -~]?"
)
_LINE_BREAK = re.compile(r"[\n\r\x0b\x0c\x85\u2028\u2029]")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean_text(value: object) -> str:
    """``value`` as a string safe to print or render: no escape sequences, no control characters
    (tab kept), no bidi overrides, line breaks turned into spaces."""
    text = value if isinstance(value, str) else str(value)
    text = _ESCAPE_SEQUENCE.sub("", text)
    text = _LINE_BREAK.sub(" ", text)
    return _CONTROL.sub("", text)


def shorten(text: str, limit: int, mark: str = "...") -> str:
    """``text`` cut to ``limit`` characters, ``mark`` included, when it is longer."""
    return text if len(text) <= limit else text[: limit - len(mark)] + mark


def write_private(path: str | Path, content: str | bytes) -> Path:
    """Write ``content`` to ``path`` atomically, readable by the owner only (0600)."""
    path = Path(path)
    data = content.encode("utf-8") if isinstance(content, str) else content
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
