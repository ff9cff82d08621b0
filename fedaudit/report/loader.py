"""Where the report templates are read from: the package's ``templates/`` folder, and failing
that the installed fedaudit's.

Under ``flwr run`` the ServerApp imports the copy of fedaudit packed in the app's FAB, and
Flower packs only .py, .toml, .md, .yaml, .yml, .json and .jsonl files (a fixed list): that copy
has ``report.template.md`` but no .j2 or .css template. The fedaudit installed where the
SuperExec runs has them all: a wheel's package data, or an editable install's source tree.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

from jinja2 import BaseLoader, ChoiceLoader, FileSystemLoader, PackageLoader


def template_loader() -> BaseLoader:
    loaders: list[BaseLoader] = [PackageLoader("fedaudit.report", "templates")]
    installed = installed_templates()
    if installed is not None and installed.is_dir():
        loaders.append(FileSystemLoader(installed))
    return ChoiceLoader(loaders)


def installed_templates() -> Path | None:
    """The templates folder of the installed fedaudit distribution (None if not installed)."""
    try:
        dist = metadata.distribution("fedaudit")
    except metadata.PackageNotFoundError:
        return None
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    url = urlparse(str(direct.get("url", "")))
    if direct.get("dir_info", {}).get("editable") and url.scheme == "file":
        return Path(unquote(url.path)) / "fedaudit" / "report" / "templates"
    return Path(str(dist.locate_file("fedaudit/report/templates")))
