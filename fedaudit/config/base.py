"""What every scenario section shares: the one-line error type, the strict base model, bounds."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A scenario problem, phrased as one line a user can act on."""


# Seeds go to numpy's and torch's generators; a budget over a week is a typo (an infinite one
# overflows the deadline); echoed values are cut, so an error stays one line.
SEED_MAX, BUDGET_MAX_SECONDS, ECHO_CHARS = 2**32 - 1, 7 * 24 * 3600.0, 60


class Section(BaseModel):
    # No float key accepts inf or NaN: every number in a scenario is a real setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
