"""A whole ensemble decision in one process, for a batch of ``/predict`` requests: the work of the one-hop Serve app
(:mod:`raytrade.serving.decision`) and of the single-process baseline in ``benchmarks/serve_baseline.py``, so the
two compute the same thing and a benchmark compares only how they are served.

Per request: the forecaster's input rows from the symbol's feature state (:class:`~raytrade.serving.histories.
SymbolHistories`: a full history, or only the new bars) → for the batch, one forecaster pass with MC dropout
(:func:`~raytrade.serving.steps.forecast_items`) and one pass per agent (:func:`~raytrade.serving.steps.act_items`)
→ per request, the risk-limited combiner (:func:`~raytrade.serving.steps.combine`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from raytrade.errors import RaytradeError
from raytrade.serving.histories import SymbolHistories
from raytrade.serving.ingress import bars_frame
from raytrade.serving.schemas import PredictRequest, PredictResponse
from raytrade.serving.slots import LoadedModel
from raytrade.serving.steps import CombinerConfig, act_items, combine, forecast_items, forecaster_member
from raytrade.store import OnlineFeatureStore


def bar_records(req: PredictRequest) -> list[dict[str, Any]]:
    """The request's bars as records ``{timestamp: UTC pd.Timestamp, open, high, low, close, volume}`` (no frame:
    a request with one new bar is decided in well under a millisecond of Python)."""
    out = []
    for b in req.bars:
        ts = pd.Timestamp(b.timestamp)
        out.append({"timestamp": ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC"),
                    "open": b.open, "high": b.high, "low": b.low, "close": b.close, "volume": b.volume})
    return out


class EnsembleDecider:
    """Decides batches of requests; holds the symbols' feature states of the current forecaster's feature set.

    Args:
        redis_url: the online store holding the symbols' bar logs (None: this process holds its own histories).
        store_prefix: the store's key prefix.
    """

    def __init__(self, redis_url: str | None = None, store_prefix: str = "raytrade") -> None:
        self.redis_url, self.store_prefix = redis_url, store_prefix
        self._histories: dict[str, SymbolHistories] = {}

    @property
    def symbols_held(self) -> int:
        return sum(len(h) for h in self._histories.values())

    @property
    def state_counts(self) -> dict[str, int]:
        """How this process reached its symbols' states (:attr:`SymbolHistories.counts`), summed."""
        total: dict[str, int] = {}
        for h in self._histories.values():
            for k, v in h.counts.items():
                total[k] = total.get(k, 0) + v
        return total

    def histories(self, bundle: Any) -> SymbolHistories:
        """The symbols' feature states for ``bundle``'s feature set (a model with another feature set starts new
        ones)."""
        fsv = bundle.feature_set_version
        if fsv not in self._histories:
            store = None if self.redis_url is None else OnlineFeatureStore(
                self.redis_url, feature_set_version=fsv, prefix=self.store_prefix)
            self._histories = {fsv: SymbolHistories(bundle.features, bundle.lookback, bundle.min_bars, store)}
        return self._histories[fsv]

    def state(self, bundle: Any, req: PredictRequest) -> Any:
        """A request's symbol state after taking in its bars (a full history, or new bars appended to the symbol's),
        or, with no bars, the state at the last bar of the symbol's bar log in the online store."""
        histories = self.histories(bundle)
        if req.bars is None:
            return histories.latest_state(req.symbol)
        if len(req.bars) >= histories.min_bars:
            return histories.take(req.symbol, bars_frame(req))
        return histories.take(req.symbol, bar_records(req))

    def decide(self, forecaster: LoadedModel, agents: dict[str, LoadedModel], combiner: CombinerConfig,
               reqs: list[PredictRequest]) -> list[PredictResponse | RaytradeError]:
        """One decision per request, in order; a request's own error (bad bars, no history, store down) in its
        place. The MC draws use :func:`raytrade.rl.inputs.agent_outputs`' fixed seed, so a window gets the numbers
        the backtest computed for it."""
        bundle = forecaster.obj
        results: list[Any] = [None] * len(reqs)
        feats: dict[int, tuple[np.ndarray, pd.Timestamp]] = {}
        for i, req in enumerate(reqs):
            try:
                held = self.state(bundle, req)
                feats[i] = (held.window(bundle.scaler), held.last)
            except RaytradeError as exc:
                results[i] = exc
        order = list(feats)
        if not order:
            return results
        fcs = forecast_items(bundle, forecaster.version, [
            {"window": feats[i][0], "feature_set_version": bundle.feature_set_version} for i in order])
        inputs = [{k: fc[k] for k in ("window", "columns", "outputs", "return_scale")} for fc in fcs]
        acts = {name: act_items(model.obj, model.version, [
            {**x, **reqs[i].agent_account(name).model_dump()} for x, i in zip(inputs, order, strict=True)])
            for name, model in agents.items()}
        for j, i in enumerate(order):
            req, fc = reqs[i], fcs[j]
            members = {name: a[j]["position"] for name, a in acts.items()}
            account = req.ensemble_account
            d = combine(combiner, {"forecaster": forecaster_member(fc["forecast"]), **members}, account.position,
                        account.drawdown)
            results[i] = PredictResponse(
                symbol=req.symbol, timestamp=pd.Timestamp(feats[i][1]).to_pydatetime(), signal=d["signal"],
                target_position=d["target_position"], confidence=fc["forecast"]["confidence"],
                forecast=fc["forecast"], agents=members,
                model_versions={"forecaster": fc["version"], **{n: a[j]["version"] for n, a in acts.items()}},
                weights=d["weights"], drawdown_cut=d["drawdown_cut"])
        return results
