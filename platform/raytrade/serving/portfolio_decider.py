"""A whole ``POST /portfolio`` decision in one process, keeping the universe's feature state between requests: the work
of the one-hop portfolio app (:mod:`raytrade.serving.portfolio_decision`) and of the in-process baseline of
``benchmarks/portfolio_serve.py``.

Per request: the forecaster's input rows of every symbol from the universe state
(:class:`~raytrade.features.streaming_universe.StreamingUniverse`: opened on a full history, then advanced by only
the new bars) → one forecaster pass over every symbol's window with MC dropout
(:func:`~raytrade.serving.steps.forecast_items`) → :func:`~raytrade.serving.portfolio_steps.decide` (the backtest's
``forecaster_risk_limited`` bar) and every portfolio agent on its own book
(:func:`~raytrade.serving.portfolio_steps.agent_weights`). The same functions as the composed app
(:mod:`raytrade.serving.portfolio_app`), so both answer the same weights.

Requests:

* **Full history**: at least :func:`~raytrade.serving.portfolio_steps.min_bars` bars of a symbol. Every symbol's bars
  are checked as the composed app checks them, and the universe state is (re)opened on them.
* **New bars**: fewer bars per symbol, for the same symbols as the state holds. Each symbol's bars must start with a
  bar the state holds, normally the last one sent, followed by the new ones. A replica that did not see the
  previous request (another replica took it) then answers 422 ``history_gap`` and never computes across a hole;
  the client sends the full history again. A bar sent again is skipped, so a retried request gets the same answer.
* **Symbols only** (``{"symbols": [...]}``): the online store's latest windows, as in the composed app.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from fastapi.exceptions import RequestValidationError

from raytrade.data.schema import TIMESTAMP
from raytrade.errors import DataValidationError
from raytrade.features.streaming_universe import StreamingUniverse
from raytrade.serving.portfolio_app import bars_frame, check_request
from raytrade.serving.portfolio_schemas import PortfolioRequest, PortfolioResponse
from raytrade.serving.portfolio_steps import (
    PortfolioParams,
    SymbolDataError,
    agent_weights,
    check_universe_bars,
    decide,
    layout,
    min_bars,
    turbulence_at_last,
    universe_features_from_store,
)
from raytrade.serving.slots import LoadedModel
from raytrade.serving.steps import forecast_items, forecaster_spec
from raytrade.store import FeaturesNotFoundError, OnlineFeatureStore

__all__ = ["PortfolioDecider"]


def _run(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def _records(bars: list[Any]) -> list[dict[str, Any]]:
    """A symbol's request bars as records ``{timestamp: UTC pd.Timestamp, OHLCV floats}`` (no frame: 30 symbols'
    new bars take well under a millisecond)."""
    out = []
    for b in bars:
        ts = pd.Timestamp(b.timestamp)
        out.append({TIMESTAMP: ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC"),
                    "open": b.open, "high": b.high, "low": b.low, "close": b.close, "volume": b.volume})
    return out


class PortfolioDecider:
    """Decides ``POST /portfolio`` requests; holds the universe state of the current forecaster's feature set.

    Args:
        redis_url: the online store for ``{"symbols"}`` requests (None: those answer 422).
        store_prefix: the store's key prefix.
    """

    def __init__(self, redis_url: str | None = None, store_prefix: str = "raytrade") -> None:
        self.redis_url, self.store_prefix = redis_url, store_prefix
        self.universe: StreamingUniverse | None = None
        self._key: tuple[str, tuple[str, ...], str | None, int] | None = None
        self._stores: dict[str, OnlineFeatureStore] = {}
        self._spec: tuple[Any, dict[str, Any]] | None = None  # (bundle, its spec with the universe's min_bars)
        #: how requests reached the state: ``opened`` (a full history), ``appended`` (new bars), ``resent`` (no
        #: new bar), ``store`` (symbols only)
        self.counts: Counter[str] = Counter()

    # ---- features -----------------------------------------------------------------------------
    def _open(self, symbols: list[str], frames: dict[str, pd.DataFrame], spec: dict[str, Any],
              params: PortfolioParams) -> StreamingUniverse:
        check_universe_bars(frames, spec, params.reference_symbol)
        cfg, cross_asset, cross_sectional, own = layout(spec)
        self.universe = StreamingUniverse(
            frames, cfg, spec["columns"], int(spec["lookback"]), own,
            reference_symbol=params.reference_symbol if cross_asset else None, cross_sectional=cross_sectional,
            keep_closes=params.turbulence_window + 2)
        self._key = (spec["feature_set_version"], tuple(symbols), params.reference_symbol, params.turbulence_window)
        self.counts["opened"] += 1
        return self.universe

    def _append(self, symbols: list[str], req: PortfolioRequest, spec: dict[str, Any],
                params: PortfolioParams) -> StreamingUniverse:
        key = (spec["feature_set_version"], tuple(symbols), params.reference_symbol, params.turbulence_window)
        state = self.universe
        need = spec["min_bars"]
        if state is None or self._key != key:
            held = "no universe state" if state is None else f"the universe state of {list(self._key[1])}"
            symbol = min(symbols, key=lambda s: len(req.bars[s]))
            raise SymbolDataError(
                symbol, f"symbol {symbol}: need at least {need} bars (feature warm-up, cross-sectional warm-up and "
                f"lookback {spec['lookback']}) to start a universe state, got {len(req.bars[symbol])}; this replica "
                f"holds {held} for this forecaster and these symbols (then send only the new bars)")
        records: dict[str, list[dict[str, Any]]] = {}
        for symbol in symbols:
            recs = _records(req.bars[symbol])
            first, last = recs[0][TIMESTAMP], state.last_bar(symbol)
            if state.held(symbol, recs[0]) is None:
                if first < last:  # older history than the state remembers: a full history, too short
                    raise SymbolDataError(
                        symbol, f"symbol {symbol}: need at least {need} bars (feature warm-up, cross-sectional warm-up "
                        f"and lookback {spec['lookback']}), got {len(recs)}; or send only its last bar sent "
                        f"({last.isoformat()}) and the new ones")
                raise DataValidationError(
                    "history_gap", f"symbol {symbol}: the bars start at {first.isoformat()}, which this replica does "
                    f"not hold (its last bar of {symbol} is {last.isoformat()}): start the new bars with the last "
                    "bar sent, or send the full history", column=TIMESTAMP, symbol=symbol, timestamp=first)
            records[symbol] = recs
        self.counts["appended" if state.update(records) else "resent"] += 1
        return state

    def features(self, symbols: list[str], req: PortfolioRequest, spec: dict[str, Any],
                 params: PortfolioParams) -> dict[str, Any]:
        """The universe's input at the request's last bar: ``{"timestamp", "windows": {symbol: (values (lookback,
        n_features) unscaled, times)}, "tradable", "turbulence"}`` (symbols with a window at the bar only)."""
        if req.bars is None:
            return self._from_store(symbols, spec, params)
        if max(len(req.bars[s]) for s in symbols) >= spec["min_bars"]:
            state = self._open(symbols, {s: bars_frame(s, req.bars[s]) for s in symbols}, spec, params)
        else:
            state = self._append(symbols, req, spec, params)
        windows, tradable = {}, {}
        for symbol in symbols:
            ok, rows = state.complete_at_last_bar(symbol)
            last = state.last_bar(symbol)
            if not ok:
                raise SymbolDataError(symbol,
                    f"symbol {symbol}: no complete feature window of {spec['lookback']} rows at its last bar "
                    f"{last.isoformat()} ({rows} complete rows held): send more bars")
            tradable[symbol] = bool(last == state.timestamp)
            if tradable[symbol]:
                windows[symbol] = state.window(symbol)
        close, times = state.closes()
        turbulence, _ = turbulence_at_last(close, state.symbols, times, params.turbulence_window)
        return {"timestamp": state.timestamp.to_pydatetime(), "windows": windows, "tradable": tradable,
                "turbulence": turbulence}

    def _from_store(self, symbols: list[str], spec: dict[str, Any], params: PortfolioParams) -> dict[str, Any]:
        if self.redis_url is None:
            raise FeaturesNotFoundError(spec["feature_set_version"], symbols[0], key="-",
                                        detail="no online store is configured (serve arg redis_url)")
        fsv = spec["feature_set_version"]
        if fsv not in self._stores:
            self._stores[fsv] = OnlineFeatureStore(self.redis_url, feature_set_version=fsv, prefix=self.store_prefix)
        feats = universe_features_from_store({s: self._stores[fsv].read_latest(s) for s in symbols}, spec,
                                             params.turbulence_window)
        self.counts["store"] += 1
        columns = list(spec["columns"])
        return {"timestamp": feats["timestamp"], "tradable": feats["tradable"], "turbulence": feats["turbulence"],
                "windows": {s: (r[columns].to_numpy(dtype=np.float64),
                                pd.DatetimeIndex(r[TIMESTAMP]).tz_convert("UTC").tz_localize(None).to_numpy())
                            for s, r in feats["rows"].items()}}

    # ---- the decision -------------------------------------------------------------------------
    def decide(self, forecaster: LoadedModel, agents: dict[str, LoadedModel], params: PortfolioParams,
               req: PortfolioRequest, timed: Callable[..., Any] | None = None) -> PortfolioResponse:
        """The answer to one request. ``timed``: a step timer ``timed(name, fn, *args) -> fn(*args)`` (a benchmark's;
        default: the steps just run).

        Raises:
            RequestValidationError: (422) a symbol outside the universe, bad held weights, a book of an unknown
                agent (:func:`~raytrade.serving.portfolio_app.check_request`).
            DataValidationError, InsufficientDataError: bad bars, too few, a gap in the history (422).
            FeaturesNotFoundError, StoreUnavailableError: ``{"symbols"}`` without a stored window or store.
        """
        unknown = [name for name in req.agent_books if name not in agents]
        if unknown:
            raise RequestValidationError([{"loc": ("body", "agent_books", name), "type": "unknown_agent",
                                           "msg": f"no portfolio agent {name!r} here; served: {sorted(agents)}"}
                                          for name in unknown])
        symbols = check_request(req, params)
        bundle = forecaster.obj
        if self._spec is None or self._spec[0] is not bundle:
            spec = forecaster_spec(bundle, forecaster.version)
            self._spec = (bundle, {**spec, "min_bars": min_bars(spec)})
        spec = self._spec[1]
        run = timed or _run
        feats = run("features (universe state)", self.features, symbols, req, spec, params)
        with_rows = list(feats["windows"])
        scaler, fsv = bundle.scaler, spec["feature_set_version"]
        outs = run(f"forecaster + MC dropout ({len(with_rows)} windows)", forecast_items, bundle, forecaster.version, [
            {"window": scaler.transform_values(feats["windows"][s][0])[None], "feature_set_version": fsv}
            for s in with_rows])
        by_symbol = dict(zip(with_rows, outs, strict=True))
        decision = run("decide (portfolio_decision)", decide, params, symbols,
                       {s: o["forecast"]["expected_return"] for s, o in by_symbol.items()}, feats["tradable"],
                       req.weights, req.drawdown, float(feats["turbulence"]), req.rebalance)
        items = {s: {k: o[k] for k in ("window", "columns", "outputs", "return_scale")}
                 | {"timestamps": feats["windows"][s][1]} for s, o in by_symbol.items()}
        agent_w: dict[str, dict[str, float]] = {}
        for name, model in agents.items():
            if not items:
                break
            book = req.agent_books.get(name)
            state = (book.weights, book.unrealised_pnl, book.drawdown) if book is not None else \
                (req.weights, req.unrealised_pnl, req.drawdown)
            agent_w[name] = run(f"agent {name}", agent_weights, model.obj, items, *state, params.limits())
        return PortfolioResponse(
            timestamp=feats["timestamp"], forecasts={s: o["forecast"] for s, o in by_symbol.items()}, agents=agent_w,
            model_versions={"forecaster": forecaster.version,
                            **{f"agent_{n}": m.version for n, m in agents.items() if n in agent_w}},
            tradable=feats["tradable"], **decision)
