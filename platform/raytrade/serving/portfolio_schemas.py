"""HTTP request/response schemas of ``POST /portfolio`` (pydantic); FastAPI turns violations into 422s whose
``detail[].loc`` names the offending field (a symbol's bars: ``["body", "bars", symbol, index, field]``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from raytrade.serving.schemas import POSITION_LIMIT, BarIn

#: most symbols one request may carry
MAX_SYMBOLS = 512

SymbolBars = Annotated[list[BarIn], Field(min_length=1, max_length=10_000)]
Weight = Annotated[float, Field(ge=-POSITION_LIMIT, le=POSITION_LIMIT, allow_inf_nan=False)]


class AgentBook(BaseModel):
    """The book one portfolio agent trades (its own, as in the backtest, where each agent trades alone): the
    weights it holds now (drifted since its last trade; fractions of equity), its drawdown ``1 - equity / peak`` and
    unrealised P&L ``equity / entry equity - 1`` (the env's definitions, :class:`raytrade_envs.TradingEnv`)."""

    model_config = ConfigDict(extra="forbid")

    weights: dict[str, Weight] = Field(default_factory=dict, max_length=MAX_SYMBOLS)
    drawdown: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    unrealised_pnl: float = Field(0.0, ge=-1.0, le=100.0, allow_inf_nan=False)


class PortfolioRequest(BaseModel):
    """``POST /portfolio`` body: the recent bars of every symbol to weigh (or only their names, for the online
    store's latest windows) and the book's state. The server keeps no state: the client's book is the truth.

    Give exactly one of ``bars`` and ``symbols``. ``weights`` are the weights held now, fractions of equity
    (negative: short), absent symbols 0; ``drawdown`` the book's ``1 - equity / running peak`` (fraction). The
    served weights equal the backtest's when the request carries the bars the pipeline had and the book's state.
    """

    model_config = ConfigDict(extra="forbid")

    bars: dict[str, SymbolBars] | None = Field(
        None, min_length=1, max_length=MAX_SYMBOLS,
        description="symbol -> its most recent bars, oldest first (the universe's symbols only); omit to use the "
                    "online store's latest windows of `symbols`")
    symbols: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None, min_length=1, max_length=MAX_SYMBOLS,
        description="symbols whose latest windows the online store holds (instead of `bars`)")
    weights: dict[str, Weight] = Field(
        default_factory=dict, max_length=MAX_SYMBOLS,
        description=f"symbol -> weight held now, fraction of equity, |w| <= {POSITION_LIMIT:g}; absent: 0")
    drawdown: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False,
                            description="the book's drawdown from its equity peak, fraction in [0, 1]")
    unrealised_pnl: float = Field(0.0, ge=-1.0, le=100.0, allow_inf_nan=False,
                                  description="the book's equity / its equity when the current positions were "
                                              "entered - 1 (fraction; the env's definition): what the portfolio "
                                              "agents observe")
    agent_books: dict[str, AgentBook] = Field(
        default_factory=dict, max_length=64,
        description="agent -> the book that agent trades (weights, drawdown, unrealised P&L), as each agent of the "
                    "backtest trades alone; an agent not named observes the request's book (weights, drawdown, "
                    "unrealised_pnl)")
    rebalance: bool = Field(True, description="a rebalance bar of the strategy (every "
                                              "portfolio.forecaster_rebalance_bars bars): trade to the forecaster's "
                                              "top k; false: keep the held weights, only the risk layer acts")

    @model_validator(mode="after")
    def _one_source(self) -> PortfolioRequest:
        if (self.bars is None) == (self.symbols is None):
            raise PydanticCustomError("bars_or_symbols", "give either `bars` (symbol -> bars) or `symbols` (read "
                                                         "from the online store), exactly one of them")
        if self.symbols is not None and len(set(self.symbols)) != len(self.symbols):
            raise PydanticCustomError("duplicate_symbol", "`symbols` names a symbol twice")
        return self

    @property
    def requested(self) -> list[str]:
        """The symbols of the request, as sent."""
        return list(self.bars) if self.bars is not None else list(self.symbols or ())


class PortfolioRisk(BaseModel):
    """What the risk layer saw and did: the book's ``drawdown`` vs ``max_drawdown`` (fractions; ``drawdown_cut``:
    exposure multiplied by the run's ``ensemble.drawdown_cut``), FinRL's ``turbulence`` index at the bar vs the run's
    ``turbulence_threshold`` (``turbulent``: all cash), and whether the turbulence rule was on for this request
    (``turbulence_rule``: ``on``, or ``off: <why>``)."""

    drawdown: float
    max_drawdown: float
    drawdown_cut: bool
    turbulence: float | None
    turbulence_threshold: float | None
    turbulent: bool
    turbulence_rule: str


class PortfolioResponse(BaseModel):
    """``POST /portfolio`` answer.

    ``weights``: target weight per symbol of the request (fractions of equity; cash = ``cash`` = ``1 - sum``), the
    backtest's ``forecaster_risk_limited`` decision at ``timestamp`` (the latest bar of the request).
    ``gross_exposure`` = ``sum |w|``, ``net_exposure`` = ``sum w``. ``forecasts``: per symbol with a window at
    ``timestamp`` the forecaster's class probabilities, ``expected_return`` (log return over ``horizon_bars``) and
    MC-dropout ``uncertainty``. ``tradable``: whether the symbol has a bar (with features) at ``timestamp``; an
    untradable symbol keeps its held weight (through the risk layer). ``agents``: each deployed portfolio agent's
    target weights for every symbol of the universe (its policy on its observation: the features of the last
    ``rl.window`` bars and the forecasts of every symbol, and its book from ``agent_books``, else the request's),
    as in the backtest where the agent trades alone. ``model_versions``: registered version of every model used.
    """

    timestamp: datetime
    weights: dict[str, float]
    cash: float
    gross_exposure: float
    net_exposure: float
    forecasts: dict[str, dict]
    agents: dict[str, dict[str, float]] = Field(default_factory=dict)
    model_versions: dict[str, str]
    tradable: dict[str, bool]
    risk: PortfolioRisk
