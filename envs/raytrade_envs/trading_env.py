"""Gymnasium trading environment: one asset or a portfolio, continuous target positions.

The agent chooses, at the close of each bar ``t``, target positions (fractions of equity,
negative = short) that are held until the close of bar ``t + 1``. The environment is composed
of four seams:

* :class:`raytrade_envs.market.MarketSimulator`: fills (at ``close[t]``, or at the next bar's
  open with ``gap_returns``), transaction costs in bps and volatility-proportional slippage;
* :class:`raytrade_envs.observation.ObservationBuilder`: feature window, forecaster outputs,
  positions, unrealised P&L and drawdown;
* :class:`raytrade_envs.actions.ActionMapper`: ``Box(-1, 1, (A,))`` actions to positions
  (position limit, long-only, gross rescaling, invalid-action policy; with ``weight_limits``, THE portfolio
  mapping ``project_weights(clip(action, -1, 1), **weight_limits)``);
* :mod:`raytrade_envs.rewards`: the reward scheme selected by name.

The constructor's data and settings are the fields of :class:`raytrade_envs.env_config.TradingEnvConfig`.
The accounting is :mod:`raytrade_envs.accounting`, shared with the backtester, so rewards and
backtest P&L agree to floating-point precision.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, SupportsFloat

import gymnasium
import numpy as np
from gymnasium import spaces

from raytrade_envs._validate import as_finite_array, as_float, as_int
from raytrade_envs.accounting import MIN_GROWTH
from raytrade_envs.actions import ActionMapper
from raytrade_envs.env_config import TradingEnvConfig
from raytrade_envs.market import MarketSimulator
from raytrade_envs.observation import ObservationBuilder
from raytrade_envs.rewards import make_reward

__all__ = ["EnvCore", "TradingEnv"]

_LOG_MIN_GROWTH = math.log(MIN_GROWTH)


class EnvCore:
    """Validated data and the four seams, shared by :class:`TradingEnv` and :class:`VecTradingEnv`.

    Built from a :class:`~raytrade_envs.env_config.TradingEnvConfig`, whose fields it validates
    (``ValueError`` naming the field); it keeps its own validated copies, not the config.

    Attributes:
        market, observations, actions: the seams; reward_name, reward_params: the reward config;
        n_bars (T), n_features (F), n_forecasts (K), n_assets (A), single (1-D returns);
        first_start (``window - 1``), last_index (``T - 1``), last_start (the last admissible
        episode start); episode_length, random_start, ruin_equity, window; has_tradable (a ``tradable``
        mask was given: orders go through the masked book and ``info`` has ``"order"``).
    """

    def __init__(self, config: TradingEnvConfig) -> None:
        feats = as_finite_array(config.features, "features", (2,), np.float32)
        market = MarketSimulator(config.returns, config.gap_returns, config.volatility, config.cost_bps,
                                 config.slippage_vol_mult, config.tradable)
        n_bars, n_features = feats.shape
        if market.n_bars != n_bars:
            raise ValueError(f"returns length {market.n_bars} does not match features length {n_bars}")
        fcst = None
        if config.forecasts is not None:
            fcst = as_finite_array(config.forecasts, "forecasts", (2,), np.float32)
            if fcst.shape[0] != n_bars:
                raise ValueError(f"forecasts length {fcst.shape[0]} does not match features length {n_bars}")
        window = as_int(config.window, "window", 1)
        if n_bars < window + 1:
            raise ValueError(
                f"window={window} is too large for {n_bars} bars: need at least window + 1 bars "
                "(features/returns length T >= window + 1)"
            )
        episode_length = config.episode_length
        if episode_length is not None:
            episode_length = as_int(episode_length, "episode_length", 1)
        self.ruin_equity = as_float(config.ruin_equity, "ruin_equity", 0.0, 1.0, high_open=True)
        self.actions = ActionMapper(market.n_assets, config.max_position, config.allow_short, config.invalid_action,
                                    portfolio=not market.single, weight_limits=config.weight_limits)
        self.has_tradable = market.tradable is not None
        self.reward_name = config.reward
        self.reward_params = dict(config.reward_params or {})
        make_reward(config.reward, config.reward_params)  # validate now; each env owns its instance

        self.market = market
        self.observations = ObservationBuilder(feats, fcst, window, market.n_assets,
                                               bool(config.account_observation), config.obs_cache_max_bytes)
        self.window = window
        self.episode_length = episode_length
        self.random_start = bool(config.random_start)
        self.account_observation = bool(config.account_observation)
        self.n_bars = n_bars
        self.n_features = n_features
        self.n_forecasts = 0 if fcst is None else fcst.shape[1]
        self.n_assets = market.n_assets
        self.single = market.single
        self.first_start = window - 1
        self.last_index = n_bars - 1  # episodes truncate when t reaches this index
        last_start = self.last_index - 1 if episode_length is None else self.last_index - episode_length
        self.last_start = max(self.first_start, last_start)

    def check_start(self, start: Any) -> int:
        """Validate a fixed episode start (``options["start"]``): an int in ``[first_start, last_start]``."""
        if not (isinstance(start, (int, np.integer)) and not isinstance(start, bool)):
            raise ValueError(f"start must be an int, got {start!r}")
        start = int(start)
        if not self.first_start <= start <= self.last_start:
            raise ValueError(f"start must be in [{self.first_start}, {self.last_start}] (window - 1 .. last "
                             f"admissible start), got {start}")
        return start

    def action_space(self) -> spaces.Box:
        return spaces.Box(low=-1.0, high=1.0, shape=(self.n_assets,), dtype=np.float32)

    def observation_space(self) -> spaces.Box:
        return spaces.Box(low=-np.inf, high=np.inf, shape=(self.observations.dim,), dtype=np.float32)


class TradingEnv(gymnasium.Env):
    """Gymnasium environment for trading one asset, or a portfolio, with continuous target positions.

    Args:
        *args, **kwargs: the environment's data and settings: the fields of
            :class:`~raytrade_envs.env_config.TradingEnvConfig`, where each one is documented (shape,
            units, default): ``features`` and ``returns`` are required (also as the first two
            positional arguments); ``window``, ``cost_bps``, ``max_position``, ``reward`` and the rest
            are optional keywords. A keyword that is not a field raises ``TypeError`` naming it.
        render_mode: ``None``, ``"ansi"`` (``render()`` returns a string) or ``"human"`` (prints it).

    Spaces:
        * action: ``Box(-1, 1, (A,), float32)`` (``A = 1`` for 1-D returns): target positions as
          fractions of ``max_position`` (see :mod:`raytrade_envs.actions` for the mapping); with
          ``weight_limits`` the targets are ``project_weights(clip(action, -1, 1), **weight_limits)``.
        * observation: ``Box(-inf, inf, (window * F + K + A + 2 * account_observation,), float32)``
          laid out as ``features[t - window + 1 : t + 1].ravel()`` (oldest row first),
          ``forecasts[t]``, positions (``A``), unrealised P&L, drawdown; see
          :func:`raytrade_envs.observation.observation_vector`. Nothing at an index ``> t`` is read.
          A portfolio lays its per-asset columns out asset-major (``F = A * F_asset``, ``K = A * K_asset``;
          :mod:`raytrade_envs.observation`, "Portfolio layout").

    Orders that cannot fill (``tradable`` given): at a bar where ``tradable[t, a]`` is False the book keeps
    its units in asset ``a`` and trades the others (the masked book of :func:`raytrade_envs.accounting.simulate`,
    the backtest's), so ``info["target"]`` is the effective target (the drifted weight kept there) and
    ``info["order"]`` the target the action asked for; ``simulate(orders, ..., tradable=tradable)`` and
    :func:`raytrade.evaluation.portfolio.portfolio_backtest` with the same mask reproduce the env's equity.

    Dynamics of ``step(action)`` at index ``t`` (the close of bar ``t``):
        1. ``new = ActionMapper(action)``: the target positions (fractions of equity after costs);
        2. the book trades from the positions it holds (``held``, drifted with prices since the last
           trade) to ``new`` and holds units until the next trade (see :mod:`raytrade_envs.accounting`)::

               1 + net = (1 + sum_a held_a * expm1(gap[t,a])) * (1 - c)
                         * (1 + sum_a new_a * expm1(returns[t,a] - gap[t,a]))

           with ``c`` the costs (``cost_bps * 1e-4 + slippage_vol_mult * volatility[t,a]`` per unit traded)
           of the drift-and-rebalance trade; ``cost`` is ``c`` as a fraction of the equity before the bar,
           ``traded`` the notional traded; ``held`` becomes ``new`` drifted over the bar;
        3. ``equity *= 1 + net``; ``peak = max(peak, equity)`` (peak starts at 1.0);
           ``drawdown = 1 - equity / peak``;
        4. unrealised P&L: the entry equity ``E0`` is reset to the equity *before* the bar
           whenever the sign pattern of the positions changes (a position opened from flat,
           flipped or closed in any asset); ``unrealised_pnl = equity / E0 - 1`` while any
           position is open, ``0.0`` when flat. It therefore includes the entry costs and, with
           next-open fills, the opening bar's gap;
        5. reward from the scheme, on ``log1p(net)`` (floored at ``log(1e-12)``), ``cost`` and the
           drawdown increase; then ``t += 1``.

        ``terminated`` when equity ``<= ruin_equity``. ``truncated`` when ``t`` reaches ``T - 1``
        (the data ran out: the observation at ``T - 1`` is valid but ``returns[T - 1]`` is never
        traded) or ``episode_length`` steps were taken. Both can be True on the same step.

    ``info`` (reset and step): ``t`` (bar index of the observation), ``position`` (the position held
    now, drifted since the last trade, as the observation shows it: float for one asset; ``(A,)`` array
    for a portfolio, which also has ``positions``), ``target`` (the target the last step traded to, the effective
    one where an order could not fill; 0 at reset), ``order`` (only with ``tradable``: the target the last action
    asked for, before untradable assets kept their units; 0 at reset), ``equity`` (relative to 1.0 at reset),
    ``net_return`` (simple, this bar), ``cost`` (this bar, fraction of equity), ``traded`` (notional traded this
    bar, fraction of equity, summed over assets),
    ``costs_paid`` (cumulative sum of ``cost``), ``drawdown``, ``unrealised_pnl``.

    Determinism: given ``reset(seed=...)`` and the same actions, everything is reproducible; the
    env pickles and unpickles mid-episode (caches are rebuilt) and continues identically.

    Raises:
        TypeError: in ``__init__`` for an unknown keyword (the message names it), a missing
            ``features``/``returns`` or an argument given twice.
        ValueError: in ``__init__`` for invalid arguments (the message names the argument); in
            ``step`` for NaN, wrongly sized or (``invalid_action="raise"``) out-of-range actions;
            in ``reset`` for a bad ``options["start"]``.
        RuntimeError: if ``step`` is called before ``reset`` or after the episode has ended.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi", "human"], "render_fps": 4}

    def __init__(self, *args: Any, render_mode: str | None = None, **kwargs: Any) -> None:
        super().__init__()
        config = TradingEnvConfig.from_args(type(self).__name__, *args, **kwargs)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}"
            )
        core = EnvCore(config)
        self._core = core
        self._market = core.market
        self._obs = core.observations
        self._mapper = core.actions
        self._reward = make_reward(core.reward_name, core.reward_params)
        self._plain_reward = self._reward.plain_log_return
        self._single = core.single
        self._last_index = core.last_index
        self.render_mode = render_mode
        self.window = core.window
        self.cost_bps = core.market.cost_bps
        self.max_position = core.actions.max_position
        self.episode_length = core.episode_length
        self.random_start = core.random_start
        self.ruin_equity = core.ruin_equity
        self.n_bars = core.n_bars
        self.n_features = core.n_features
        self.n_forecasts = core.n_forecasts
        self.n_assets = core.n_assets
        self.action_space = core.action_space()
        self.observation_space = core.observation_space()

        self._tradable = core.has_tradable
        self._t = -1
        self._start = -1
        self._clear_book()
        self._done = True

    # ------------------------------------------------------------------ state
    @property
    def t(self) -> int:
        """Current bar index (the index of the latest observation); -1 before reset."""
        return self._t

    @property
    def position(self) -> Any:
        """Position held now (drifted since the last trade): a float (one asset) or a copy of the ``(A,)`` array."""
        return self._position if self._single else self._position.copy()

    @property
    def equity(self) -> float:
        """Portfolio equity relative to 1.0 at reset."""
        return self._equity

    @property
    def observation_layout(self) -> dict[str, Any]:
        """Slices/indices of the observation parts: features, forecasts, positions, unrealised_pnl, drawdown."""
        return self._obs.layout()

    # ---------------------------------------------------------------- helpers
    def _clear_book(self) -> None:
        """A flat book at equity 1.0: no positions, targets, costs or drawdown; no steps taken."""
        self._steps = 0
        self._position: Any = 0.0 if self._single else np.zeros(self.n_assets)
        self._target: Any = 0.0 if self._single else np.zeros(self.n_assets)
        self._order: Any = self._target
        self._equity = 1.0
        self._peak = 1.0
        self._entry_equity = 1.0
        self._drawdown = 0.0
        self._unrealised = 0.0
        self._costs_paid = 0.0
        self._last_net = 0.0
        self._last_cost = 0.0
        self._last_traded = 0.0

    def _observation(self) -> np.ndarray:
        if self._single:
            return self._obs.build_single(self._t, self._position, self._unrealised, self._drawdown)
        return self._obs.build(self._t, self._position, self._unrealised, self._drawdown)

    def _info(self) -> dict[str, Any]:
        info = {
            "t": self._t,
            "position": self._position if self._single else self._position.copy(),
            "target": self._target if self._single else self._target.copy(),
            "equity": self._equity,
            "net_return": self._last_net,
            "cost": self._last_cost,
            "traded": self._last_traded,
            "costs_paid": self._costs_paid,
            "drawdown": self._drawdown,
            "unrealised_pnl": self._unrealised,
        }
        if not self._single:
            info["positions"] = self._position.copy()
        if self._tradable:
            info["order"] = self._order if self._single else self._order.copy()
        return info

    # -------------------------------------------------------------------- API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new episode: flat book, equity 1.0, reward state cleared.

        The start index is ``window - 1``; with ``random_start`` it is drawn uniformly from
        ``[window - 1, last_start]`` with ``self.np_random``; ``options={"start": s}`` forces
        ``s`` (ValueError outside that range).

        Returns:
            ``(observation, info)`` with the info keys documented on the class (zeros for the
            per-bar values).
        """
        super().reset(seed=seed)
        core = self._core
        if options and "start" in options:
            start = core.check_start(options["start"])
        elif self.random_start and core.last_start > core.first_start:
            start = int(self.np_random.integers(core.first_start, core.last_start + 1))
        else:
            start = core.first_start
        self._start = start
        self._t = start
        self._clear_book()
        self._reward.reset()
        self._done = False
        if self.render_mode == "human":
            self.render()
        return self._observation(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Trade from the held position(s) to the target(s), hold the units for one bar, advance ``t``.

        Args:
            action: shape ``(A,)`` (any array-like with ``A`` numbers) in ``[-1, 1]``.

        Returns:
            ``(observation, reward, terminated, truncated, info)``; see the class docstring.

        Raises:
            ValueError: for NaN, a wrongly sized action, or an out-of-range / infinite action
                with ``invalid_action="raise"``.
            RuntimeError: if called before ``reset`` or after the episode ended.
        """
        if self._done:
            raise RuntimeError("step() called on a finished or un-reset episode; call reset() first")
        t = self._t
        prev = self._position
        order = None
        if self._tradable:  # the masked book: untradable assets keep their units, `new` is the effective target
            if self._single:
                order = self._mapper.map_single(action)
                net, cost, traded, held_a, new_a = self._market.step_tradable(t, np.array([prev]), np.array([order]))
                held, new = float(held_a[0]), float(new_a[0])
                opened = prev == 0.0 or (new > 0.0) != (prev > 0.0)
                flat = new == 0.0
            else:
                order = self._mapper.map(action)
                net, cost, traded, held, new = self._market.step_tradable(t, prev, order)
                opened = bool((np.sign(new) != np.sign(prev)).any())
                flat = not new.any()
        elif self._single:
            new = self._mapper.map_single(action)
            net, cost, traded, held = self._market.step_single(t, prev, new)
            opened = prev == 0.0 or (new > 0.0) != (prev > 0.0)
            flat = new == 0.0
        else:
            new = self._mapper.map(action)
            net, cost, traded, held = self._market.step(t, prev, new)
            opened = bool((np.sign(new) != np.sign(prev)).any())
            flat = not new.any()
        growth = 1.0 + net
        log_ret = math.log1p(net) if growth > MIN_GROWTH else _LOG_MIN_GROWTH
        before = self._equity
        equity = before * growth
        peak = self._peak
        if equity > peak:
            peak = equity
            self._peak = peak
        drawdown = 1.0 - equity / peak
        if flat:
            unrealised = 0.0
        else:
            if opened:
                self._entry_equity = before
            unrealised = equity / self._entry_equity - 1.0
        if self._plain_reward:
            reward = log_ret
        else:
            dd_inc = drawdown - self._drawdown
            reward = self._reward(log_ret, cost, dd_inc if dd_inc > 0.0 else 0.0)
        self._equity = equity
        self._position = held
        self._target = new
        if order is not None:
            self._order = order
        self._drawdown = drawdown
        self._unrealised = unrealised
        self._last_net = net
        self._last_cost = cost
        self._last_traded = traded
        self._costs_paid += cost
        t += 1
        self._t = t
        self._steps += 1
        terminated = equity <= self.ruin_equity
        truncated = t >= self._last_index or (
            self.episode_length is not None and self._steps >= self.episode_length
        )
        self._done = terminated or truncated
        if self._single:
            obs = self._obs.build_single(t, held, unrealised, drawdown)
        else:
            obs = self._obs.build(t, held, unrealised, drawdown)
        if self.render_mode == "human":
            self.render()
        return obs, reward, terminated, truncated, self._info()

    def render(self) -> str | None:
        """Describe the current state: ``"ansi"`` returns a string, ``"human"`` prints it, ``None`` does nothing."""
        if self.render_mode is None:
            return None
        if self._single:
            pos = f"position={self._position:+.4f}"
        else:
            pos = "positions=[" + ", ".join(f"{p:+.4f}" for p in self._position) + "]"
        text = (
            f"t={self._t} {pos} equity={self._equity:.6f} net_return={self._last_net:+.6f} "
            f"cost={self._last_cost:.6f} costs_paid={self._costs_paid:.6f} drawdown={self._drawdown:.4f} "
            f"unrealised_pnl={self._unrealised:+.6f}"
        )
        if self.render_mode == "ansi":
            return text
        print(text)
        return None
