"""HTTP request/response schemas of the Serve app (pydantic); FastAPI turns violations into 422s
whose ``detail[].loc`` names the offending field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

#: the range of nanosecond timestamps (pandas ``datetime64[ns]``), where bars are stored and fingerprinted
TIMESTAMP_MIN = pd.Timestamp.min.ceil("s").to_pydatetime().replace(tzinfo=UTC)
TIMESTAMP_MAX = pd.Timestamp.max.floor("s").to_pydatetime().replace(tzinfo=UTC)


class BarIn(BaseModel):
    """One OHLCV bar; ``timestamp`` ISO-8601 (naive means UTC); prices in quote currency, volume in base units."""

    model_config = ConfigDict(extra="forbid")

    timestamp: datetime = Field(description="bar open time, ISO-8601, naive means UTC; within "
                                            f"[{TIMESTAMP_MIN.isoformat()}, {TIMESTAMP_MAX.isoformat()}]")
    open: float = Field(gt=0, allow_inf_nan=False)
    high: float = Field(gt=0, allow_inf_nan=False)
    low: float = Field(gt=0, allow_inf_nan=False)
    close: float = Field(gt=0, allow_inf_nan=False)
    volume: float = Field(ge=0, allow_inf_nan=False)

    @field_validator("timestamp")
    @classmethod
    def _in_range(cls, v: datetime) -> datetime:
        utc = v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)
        if not TIMESTAMP_MIN <= utc <= TIMESTAMP_MAX:
            raise ValueError(f"timestamp must be within [{TIMESTAMP_MIN.isoformat()}, {TIMESTAMP_MAX.isoformat()}] "
                             "(the nanosecond timestamps bars are stored in)")
        return v


class PredictRequest(BaseModel):
    """``POST /predict`` body: the most recent bars of one symbol, oldest first, and the current position.

    Without ``bars`` the forecaster reads the symbol's latest window from the Redis online store.
    """

    model_config = ConfigDict(extra="forbid")

    symbol: str = Field(min_length=1, max_length=64)
    bars: list[BarIn] | None = Field(None, min_length=1, max_length=10_000,
                                     description="most recent bars; omit to use the online feature store")
    position: float = Field(0.0, ge=-1.0, le=1.0, allow_inf_nan=False,
                            description="current holding, fraction of equity in [-1, 1]")
    drawdown: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False,
                            description="the account's current drawdown from its equity peak, fraction in [0, 1]; "
                                        "above the combiner's max_drawdown the target position is cut")

    @field_validator("symbol")
    @classmethod
    def _strip(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("symbol must not be blank")
        return v


class PredictResponse(BaseModel):
    """``POST /predict`` answer.

    ``signal`` is the trade to make: ``buy`` if ``target_position`` is above the current position by more
    than the deadband, ``sell`` if below, else ``hold``. ``confidence`` is the forecaster's probability
    of its most likely class. ``forecast`` holds the class probabilities and the expected log return over
    ``horizon_bars``, and ``uncertainty`` the MC-dropout spread (``return_std`` in log-return units,
    ``mutual_information`` and ``predictive_entropy`` in nats) when the model has MC samples. ``agents`` maps
    each RL agent to the action it proposes, in [-1, 1] (the position it means is action x the combiner's
    ``max_position``, as in the env). ``model_versions`` names the registered version of every
    model that served the request, ``forecaster_variant`` the A/B arm (``champion`` or ``challenger``).
    ``weights`` are the combiner's normalised member weights, ``drawdown_cut`` whether the drawdown limit cut
    the position, ``cached`` whether the forecast and agent positions came from the Redis prediction cache.
    """

    symbol: str
    timestamp: datetime
    signal: Literal["buy", "hold", "sell"]
    target_position: float = Field(ge=-1.0, le=1.0)
    confidence: float
    forecast: dict
    agents: dict[str, float]
    model_versions: dict[str, str]
    forecaster_variant: Literal["champion", "challenger"] = "champion"
    weights: dict[str, float] = Field(default_factory=dict)
    drawdown_cut: bool = False
    cached: bool = False


class BatchPredictRequest(BaseModel):
    """``POST /predict/batch`` body: up to 256 ``/predict`` requests (any symbols), answered in order."""

    model_config = ConfigDict(extra="forbid")

    requests: list[PredictRequest] = Field(min_length=1, max_length=256)


class BatchPredictResponse(BaseModel):
    """``POST /predict/batch`` answer: one :class:`PredictResponse` per request, in request order."""

    predictions: list[PredictResponse]
