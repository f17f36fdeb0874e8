"""Exceptions raised by raytrade.

Every error a user can cause derives from :class:`RaytradeError`; the CLI prints its message on
one line and exits non-zero, and the HTTP layer maps it to a 422 response.
"""

from __future__ import annotations

from typing import Any


class RaytradeError(Exception):
    """Base class of every error raytrade raises on purpose."""


class ConfigError(RaytradeError):
    """A config file or config value is invalid; the message names the field."""


class DataValidationError(RaytradeError):
    """OHLCV data broke a validation rule.

    Attributes:
        rule: short name of the rule broken (e.g. ``"ohlc_relation"``, ``"duplicate_timestamp"``).
        column: the column at fault (or ``None`` when the rule is about the whole table).
        symbol: the symbol whose bars break the rule (or ``None``).
        timestamp: the first offending bar's timestamp (or ``None``).
        count: how many rows break the rule.
    """

    def __init__(
        self,
        rule: str,
        message: str,
        *,
        column: str | None = None,
        symbol: str | None = None,
        timestamp: Any = None,
        count: int | None = None,
    ) -> None:
        self.rule = rule
        self.message = message
        self.column = column
        self.symbol = symbol
        self.timestamp = timestamp
        self.count = count
        parts = [f"rule={rule}"]
        if column is not None:
            parts.append(f"column={column}")
        if symbol is not None:
            parts.append(f"symbol={symbol}")
        if timestamp is not None:
            parts.append(f"first_bad_timestamp={timestamp}")
        if count is not None:
            parts.append(f"rows={count}")
        super().__init__(f"{message} [{', '.join(parts)}]")

    def __reduce__(self) -> tuple[Any, ...]:
        """Picklable with its fields (Ray ships errors raised in a Serve replica or task to the caller)."""
        return (_rebuild_validation_error, (self.rule, self.message, self.column, self.symbol, self.timestamp,
                                            self.count))


def _rebuild_validation_error(rule: str, message: str, column: str | None, symbol: str | None, timestamp: Any,
                              count: int | None) -> DataValidationError:
    return DataValidationError(rule, message, column=column, symbol=symbol, timestamp=timestamp, count=count)


class ModelNotFoundError(RaytradeError):
    """A model (or alias) is not in the MLflow registry."""


class TrackingServerError(RaytradeError):
    """The MLflow tracking server (an ``http(s)://`` ``tracking.uri``) does not answer."""


class InsufficientDataError(RaytradeError):
    """Too few bars for the requested lookback/horizon/split."""
