"""From a config to model-ready data: load + validate a universe's (or one symbol's) bars, Ray Data features and labels,
chronological split with embargo, train-only scaler, windows.

Used by every stage that trains or evaluates the forecaster (pipeline, ``raytrade train``/``tune``/
``walk-forward``), so they all see the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from raytrade.config import PipelineConfig
from raytrade.data.universe import Universe, universe_from_config
from raytrade.data.validation import ValidationReport
from raytrade.dataset.preprocess import PreprocessResult, preprocess
from raytrade.dataset.splits import Split, chronological_split
from raytrade.dataset.windows import Windows, make_windows
from raytrade.errors import ConfigError
from raytrade.features.scaler import FeatureScaler


@dataclass
class MarketData:
    """Validated bars of ONE symbol.

    Attributes:
        bars: OHLCV bars (after the validation policy, ``data.start``/``end`` and ``data.max_bars``), oldest first.
        validation: the validation report of the raw file.
        symbol: the symbol traded.
        universe: the universe of one it was loaded as.
    """

    path: Path
    bars: pd.DataFrame
    validation: ValidationReport
    symbol: str
    universe: Universe | None = None


def load_universe_data(cfg: PipelineConfig, data_path: str | Path | None = None) -> Universe:
    """Read, validate (``data.policy`` per symbol, ``data.symbol_policy``), window (``data.start``/``end``) and trim
    (``data.max_bars``) a universe: every symbol of the input, or ``data.symbols``. See :mod:`raytrade.data.universe`.

    Raises:
        DataValidationError: a rule is broken under policy ``fail`` (``symbol_policy: fail``), or every symbol was
            excluded. ConfigError: unknown ``data.symbols``, mixed bar intervals, a bad ``data.start``/``end``.
    """
    return universe_from_config(cfg.data, Path(data_path or cfg.data.path))


def as_market_data(universe: Universe) -> MarketData:
    """The single-symbol view of a universe of one.

    Raises:
        ConfigError: the universe holds several symbols (a single-symbol stage was given a universe).
    """
    symbols = universe.symbols
    if len(symbols) != 1:
        raise ConfigError(
            f"data.symbol: this stage runs on one symbol; {universe.path} holds {len(symbols)} "
            f"({', '.join(map(str, symbols[:5]))}{', ...' if len(symbols) > 5 else ''}): set data.symbol, or "
            f"data.symbols: [ONE], or run the universe with raytrade pipeline"
        )
    return MarketData(path=Path(universe.path), bars=universe.bars, validation=universe.validation,
                      symbol=str(symbols[0]), universe=universe)


def load_market_data(cfg: PipelineConfig, data_path: str | Path | None = None) -> MarketData:
    """Read, validate (``data.policy``), window (``data.start``/``end``) and trim (``data.max_bars``) the bars of
    one symbol (:func:`load_universe_data` then :func:`as_market_data`).

    Raises:
        DataValidationError: a rule is broken under policy ``fail``.
        ConfigError: the file holds several symbols and neither ``data.symbol`` nor ``data.symbols`` picks one.
    """
    return as_market_data(load_universe_data(cfg, data_path))


@dataclass
class PreparedData:
    """Features and labels of one symbol, split chronologically, scaled with train-only statistics.

    Attributes:
        features: the Ray Data preprocessing result (unscaled features + ``label_*`` columns).
        labelled: rows with a label (the unlabelled last ``horizon`` bars removed), oldest first.
        split: train | embargo | val | embargo | test of ``labelled``.
        scaler: fitted on ``split.train`` only.
        scaled: the three parts with scaled feature columns.
    """

    features: PreprocessResult
    labelled: pd.DataFrame
    split: Split
    scaler: FeatureScaler
    scaled: dict[str, pd.DataFrame]
    _windows: dict[int, dict[str, Windows]] = field(default_factory=dict, repr=False)

    @property
    def feature_columns(self) -> list[str]:
        return self.features.feature_columns

    def windows(self, lookback: int) -> dict[str, Windows]:
        """``{"train", "val", "test"}`` windows ``(n, lookback, n_features)`` (cached per lookback)."""
        if lookback not in self._windows:
            self._windows[lookback] = {name: make_windows(part, self.feature_columns, lookback)
                                       for name, part in self.scaled.items()}
        return self._windows[lookback]


def labelled_features(cfg: PipelineConfig, market: MarketData | Universe) -> tuple[PreprocessResult, pd.DataFrame]:
    """Ray Data features + labels of ``market``; returns the result and its labelled rows (the last
    ``horizon`` bars, which have no label yet, removed), oldest first. Needs a running Ray instance."""
    pre = preprocess(market.bars, cfg.features, cfg.labels)
    return pre, pre.frame[pre.frame["label_return"].notna()].reset_index(drop=True)


def prepare_data(cfg: PipelineConfig, market: MarketData | Universe, embargo: int | None = None,
                 min_rows: int | None = None) -> PreparedData:
    """Ray Data features + labels, chronological split (``embargo`` bars, default ``cfg.embargo``) and scaler.

    Needs a running Ray instance (see :func:`raytrade.runtime.ensure_ray`).

    Raises:
        InsufficientDataError: too few rows for the split, embargo and ``min_rows`` per part
            (default ``lookback + rl.window + 1``).
    """
    pre, labelled = labelled_features(cfg, market)
    embargo = cfg.embargo if embargo is None else embargo
    split = chronological_split(labelled, cfg.split, embargo,
                                min_rows=min_rows or cfg.model.lookback + cfg.rl.window + 1)
    scaler = FeatureScaler(pre.feature_columns).fit(split.train)
    scaled = {name: scaler.transform(part) for name, part in split.parts().items()}
    return PreparedData(features=pre, labelled=labelled, split=split, scaler=scaler, scaled=scaled)
