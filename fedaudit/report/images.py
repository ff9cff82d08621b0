"""Images for report.html, embedded as ``data:`` URIs so the report stays one file.

A record names them by a path relative to the run directory; a path that leaves the run
directory, is not a regular file, is too large or is not a PNG is refused and said so, never
read or linked.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

#: All the image bytes one report may embed, and the most one image may have.
IMAGE_BUDGET_BYTES = 1_000_000
MAX_IMAGE_BYTES = 256_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ImageBudget:
    """The image bytes a report may still embed (it stays one small file)."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def take(self, size: int) -> bool:
        if size > self.left:
            return False
        self.left -= size
        return True


def embed_png(run_dir: Path, name: Any, budget: ImageBudget) -> tuple[str | None, str]:
    """``(data URI, "")`` for a PNG the record names inside ``run_dir``, else ``(None, why not)``."""
    if not isinstance(name, str) or not name:
        return None, "no image"
    relative = Path(name)
    root = run_dir.resolve()
    try:
        path = (root / relative).resolve()
    except (OSError, RuntimeError):
        return None, "refused: unreadable path"
    if relative.is_absolute() or not path.is_relative_to(root):
        return None, "refused: the path leaves the run directory"
    if not path.is_file():
        return None, "image file missing"
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        return None, "image too large to embed"
    data = path.read_bytes()
    if not data.startswith(PNG_MAGIC):
        return None, "not a PNG file"
    if not budget.take(len(data)):
        return None, "not embedded: the report's image budget is spent"
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii"), ""
