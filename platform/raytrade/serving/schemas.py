"""HTTP request/response schemas of the Serve app (pydantic); FastAPI turns violations into 422s
whose ``detail[].loc`` names the offending field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

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


#: largest |position| an account may report: a rebalanced book holds at most ``max_position`` (<= 1) of equity, and
#: until the next rebalance a short drifts past -1 as the price rises; 2 is a full short after a one-bar rise of a
#: third. Beyond it the number is far more likely percent than a fraction.
POSITION_LIMIT = 2.0
#: largest unrealised P&L an account may report: a 1,001-fold equity since the position was opened (the bound also
#: keeps the observation finite in float32)
UNREALISED_PNL_MAX = 1000.0


class Account(BaseModel):
    """The account state an RL agent observes with the market (the last values of its observation), as the trading
    env defines it (:class:`raytrade_envs.TradingEnv`; its ``info`` has the same three keys). All are fractions, not
    percent; a flat, fresh book is all zeros (the defaults).
    """

    model_config = ConfigDict(extra="forbid")

    position: float = Field(0.0, ge=-POSITION_LIMIT, le=POSITION_LIMIT, allow_inf_nan=False,
                            description="the position held now, fraction of equity (negative: short); "
                                        f"|position| <= {POSITION_LIMIT:g}")
    unrealised_pnl: float = Field(0.0, ge=-1.0, le=UNREALISED_PNL_MAX, allow_inf_nan=False,
                                  description="P&L of the open position since it was opened (or flipped), fraction "
                                              "of the equity then: equity / entry equity - 1, in "
                                              f"[-1, {UNREALISED_PNL_MAX:g}]; 0 when flat")
    drawdown: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False,
                            description="1 - equity / running peak of equity, fraction in [0, 1]")


class PredictRequest(BaseModel):
    """``POST /predict`` body: the most recent bars of one symbol, oldest first, and the account state.

    Without ``bars`` the forecaster reads the symbol's latest window from the Redis online store.

    The server keeps no account state: every request carries it (the client's book is the truth, replicas come
    and go, and a retried request must not move any state). ``account`` is the ensemble's book: its
    ``position`` sets the signal (``target_position`` vs what is held) and its ``drawdown`` the combiner's drawdown
    cut; every agent observes it too, unless ``agent_accounts`` gives that agent its own (as the backtest, where each
    agent trades its own book). The legacy fields ``position`` and ``drawdown`` (no ``account``) mean
    ``account = {position, unrealised_pnl: 0, drawdown}`` (giving both forms is a 422). Read the state through
    :attr:`ensemble_account` and :meth:`agent_account`: with ``account`` given, the legacy attributes stay 0.
    """

    model_config = ConfigDict(extra="forbid")

    symbol: str = Field(min_length=1, max_length=64)
    bars: list[BarIn] | None = Field(None, min_length=1, max_length=10_000,
                                     description="most recent bars; omit to use the online feature store")
    position: float = Field(0.0, ge=-POSITION_LIMIT, le=POSITION_LIMIT, allow_inf_nan=False,
                            description="legacy form of account.position (not with `account`): position held now, "
                                        "fraction of equity")
    drawdown: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False,
                            description="legacy form of account.drawdown (not with `account`): the account's "
                                        "drawdown from its equity peak, fraction in [0, 1]; above the combiner's "
                                        "max_drawdown the target position is cut")
    account: Account | None = Field(None, description="the ensemble's account state (fractions); every agent "
                                                      "observes it unless agent_accounts overrides it")
    agent_accounts: dict[str, Account] = Field(
        default_factory=dict, max_length=64,
        description="agent name (as in /models) -> the account state that agent observes instead of `account` "
                    "(a whole replacement: fields left out are 0); an unknown name is a 422")

    @field_validator("symbol")
    @classmethod
    def _strip(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("symbol must not be blank")
        return v

    @model_validator(mode="after")
    def _one_account_form(self) -> PredictRequest:
        legacy = [f for f in ("position", "drawdown") if f in self.model_fields_set]
        if self.account is not None and legacy:
            raise PydanticCustomError(
                "account_conflict", "give the account state either as `account` or as the legacy {fields}, not both",
                {"fields": " and ".join(f"`{f}`" for f in legacy)})
        return self

    @property
    def ensemble_account(self) -> Account:
        """The ensemble's account: ``account``, or the legacy ``position``/``drawdown`` (0 when absent)."""
        if self.account is not None:
            return self.account
        return Account(position=self.position, drawdown=self.drawdown)

    def agent_account(self, name: str) -> Account:
        """The account state agent ``name`` observes: its ``agent_accounts`` entry, else :attr:`ensemble_account`."""
        return self.agent_accounts[name] if name in self.agent_accounts else self.ensemble_account


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
