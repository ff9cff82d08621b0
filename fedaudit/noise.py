"""Other libraries' output that a ``fedaudit`` user cannot act on, silenced by name.

Each filter below names what it hides; everything else still prints, and ``--verbose`` shows it
all (``fedaudit run --verbose`` installs none of them and sets ``FEDAUDIT_VERBOSE`` for the
processes it starts; see also ``fedaudit.models.quiet``).
"""

from __future__ import annotations

import logging
import warnings

#: Libraries whose retry warnings (a hub id that cannot be reached is retried with a warning each
#: time) would bury the one error line.
QUIET_LOGGERS = ("huggingface_hub", "transformers", "urllib3", "filelock", "datasets")

#: Flower's warnings about choices fedaudit makes on purpose: it drives Flower's in-process
#: simulation (``run_simulation``, deprecated in favour of ``flwr run``, which runs the same apps),
#: and it evaluates the global model on the server, so federated evaluation is off.
FLOWER_NOTICES = (
    "DEPRECATED FEATURE: The `run_simulation` function is deprecated",
    "fraction_evaluate is set to 0.0",
)

#: Ray's notice that a later Ray will stop hiding GPUs from tasks that ask for none (fedaudit's
#: clients ask for none either way); it asks for an environment variable, not for a change here.
RAY_NOTICE = r"Tip: In future versions of Ray, Ray will no longer override accelerator"


def quiet_libraries(verbose: bool = False) -> None:
    """``QUIET_LOGGERS`` at ERROR, or back to INFO with ``verbose``."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)


class _DropNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(notice in message for notice in FLOWER_NOTICES)


def quiet_simulation() -> None:
    """Flower's own logs at WARNING without ``FLOWER_NOTICES``, and no ``RAY_NOTICE``."""
    flower = logging.getLogger("flwr")
    flower.setLevel(logging.WARNING)
    if not any(isinstance(f, _DropNotices) for f in flower.filters):
        flower.addFilter(_DropNotices())
    warnings.filterwarnings("ignore", message=RAY_NOTICE, category=FutureWarning)
