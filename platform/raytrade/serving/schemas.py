"""HTTP request/response schemas of the Serve app (pydantic); FastAPI turns violations into 422s
whose ``detail[].loc`` names the offending field."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class BarIn(BaseModel):
    """One OHLCV bar; ``timestamp`` ISO-8601 (naive means UTC); prices in quote currency, volume in base units."""

    model_config = ConfigDict(extra="forbid")

    timestamp: datetime
    open: float = Field(gt=0, allow_inf_nan=False)
    high: float = Field(gt=0, allow_inf_nan=False)
    low: float = Field(gt=0, allow_inf_nan=False)
    close: float = Field(gt=0, allow_inf_nan=False)
    volume: float = Field(ge=0, allow_inf_nan=False)


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
    ``horizon_bars``. ``agents`` maps each RL agent to the target position it proposes.
    """

    symbol: str
    timestamp: datetime
    signal: Literal["buy", "hold", "sell"]
    target_position: float = Field(ge=-1.0, le=1.0)
    confidence: float
    forecast: dict
    agents: dict[str, float]
    model_versions: dict[str, str]
