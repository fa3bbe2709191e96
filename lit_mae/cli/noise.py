"""Messages the command line hides because they say nothing about the user's run: Lightning's
advertisement for its cloud logger, and a deprecation inside Lightning's own use of torch's pytree
(Lightning 2.6 with torch >= 2.10), which the user cannot act on."""

from __future__ import annotations

import logging
import warnings

LIGHTNING_TIP = "💡 Tip:"


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_TIP)


def quiet_known_noise() -> None:
    """Hide exactly those messages (each by its own text); everything else is left as it is."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(existing, _DropTips) for existing in logger.filters):  # once per process
        logger.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
