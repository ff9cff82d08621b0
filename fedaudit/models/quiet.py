"""transformers' output at every load of a pretrained model that nobody can act on.

* The "LOAD REPORT" that lists only the classification head as MISSING: the zoo puts a fresh head
  on every pretrained model on purpose (as many labels as the scenario's data has), so the report
  says nothing new. A report that lists anything else (an unexpected or mismatched weight, a
  missing body weight) still prints.
* The "Loading weights" bar: over before it can be read, and a line of carriage returns in a log.
  Download bars stay.

``quiet()`` installs both in the process that builds models (the run, Ray's client workers, a
ClientApp or ServerApp process); ``FEDAUDIT_VERBOSE=1`` (``fedaudit run --verbose`` sets it, and
the processes it starts inherit it) keeps everything.
"""

from __future__ import annotations

import logging
import os
from typing import Any

#: Set (to anything but "" or "0") by ``fedaudit run --verbose``: nothing is hidden.
VERBOSE_ENV = "FEDAUDIT_VERBOSE"
#: Parameter prefixes of the classification heads the zoo adds (BERT: classifier, GPT-2/LLaMA: score).
HEAD_PREFIXES = ("classifier.", "score.")
#: The transformers logger that writes the load report.
REPORT_LOGGER = "transformers.modeling_utils"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


class ExpectedHeadReport(logging.Filter):
    """Drops a load report whose every row is a head parameter reported MISSING."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        rows = []
        for line in message.splitlines():
            cells = [cell.strip() for cell in line.split("|")]
            if len(cells) >= 2 and cells[1].isalpha() and cells[1].isupper():
                rows.append((cells[0], cells[1]))
        return not rows or not all(status == "MISSING" and key.startswith(HEAD_PREFIXES) for key, status in rows)


def _no_weight_loading_bar(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs.get("desc") == "Loading weights":
        kwargs = {**kwargs, "disable": True}
    return factory(*args, **kwargs)


def quiet() -> None:
    """Install both filters (idempotent); nothing with ``FEDAUDIT_VERBOSE``."""
    if verbose():
        return
    from transformers.utils import logging as hf_logging

    logger = logging.getLogger(REPORT_LOGGER)
    if not any(isinstance(f, ExpectedHeadReport) for f in logger.filters):
        logger.addFilter(ExpectedHeadReport())
    hf_logging.set_tqdm_hook(_no_weight_loading_bar)
