"""Single-asset trading environment following the Gymnasium API.

The agent chooses, at the close of each bar ``t``, a target position (fraction of
equity, negative = short) that is held until the close of bar ``t + 1``. The reward
is the portfolio's net *log* return over that bar, computed with
:func:`raytrade_envs.accounting.bar_net_return` so that it matches the backtester
exactly.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, SupportsFloat

import gymnasium
import numpy as np
from gymnasium import spaces

from raytrade_envs.accounting import BPS, bar_net_return

__all__ = ["TradingEnv"]

_MIN_GROWTH = 1e-12  # floor on (1 + net) before taking the log of a ruinous bar


def _is_int(value: Any) -> bool:
    """True for Python/numpy integers (but not bools)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _as_finite_array(value: Any, name: str, ndim: int, dtype: type) -> np.ndarray:
    """Convert ``value`` to a contiguous array of ``dtype`` and validate it.

    Raises:
        ValueError: naming ``name`` if the array has the wrong ndim, cannot be
            converted to numbers, or contains non-finite values (also after the
            cast to ``dtype``, which catches float32 overflow).
    """
    try:
        arr64 = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric array-like: {exc}") from exc
    if arr64.ndim != ndim:
        expected = "(T,)" if ndim == 1 else "(T, n_columns)"
        raise ValueError(
            f"{name} must be {ndim}-D with shape {expected}, got shape {arr64.shape}"
        )
    if not np.all(np.isfinite(arr64)):
        bad = np.argwhere(~np.isfinite(arr64))[0]
        raise ValueError(
            f"{name} contains non-finite values (NaN or inf), first at index {tuple(int(i) for i in bad)}"
        )
    arr = np.ascontiguousarray(arr64, dtype=dtype)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has values that overflow {np.dtype(dtype).name}")
    arr.setflags(write=False)
    return arr


class TradingEnv(gymnasium.Env):
    """Gymnasium environment for trading one asset with a continuous position.

    Args:
        features: array-like of shape ``(T, F)``; already-scaled, causal features
            (row ``t`` uses only bars ``<= t``). Stored as float32.
        returns: array-like of shape ``(T,)``; next-bar natural log returns,
            ``returns[t] = ln(close[t + 1] / close[t])``, i.e. the return earned by
            the position chosen at ``t``. Stored as float64.
        forecasts: optional array-like of shape ``(T, K)``; forecaster outputs
            available at the close of bar ``t`` (class probabilities, predicted
            returns, ...). Stored as float32.
        window: number of feature rows (bars ``t - window + 1 .. t``) in each
            observation; ``>= 1``.
        cost_bps: transaction cost in basis points (1e-4) of traded notional;
            ``>= 0``.
        episode_length: maximum number of steps per episode; ``None`` runs until
            the data runs out.
        random_start: if True, ``reset`` draws the start index uniformly (with
            ``self.np_random``) from the starts that leave room for
            ``episode_length`` steps; otherwise every episode starts at
            ``window - 1``.
        max_position: scale applied to the clipped action; the applied position
            is ``clip(action, -1, 1) * max_position``; in ``(0, 1]``.
        render_mode: ``None``, ``"ansi"`` (``render`` returns a string) or
            ``"human"`` (``render`` prints it).

    Spaces:
        * action: ``Box(-1, 1, shape=(1,), float32)`` -- target position as a
          fraction of ``max_position`` of equity.
        * observation: ``Box(-inf, inf, shape=(window * F + K + 1,), float32)``
          laid out as ``features[t - window + 1 : t + 1].ravel()`` (oldest row
          first), then ``forecasts[t]`` (if given), then the current position.
          Nothing at an index ``> t`` is ever read.

    Dynamics of ``step(action)`` at index ``t``:
        ``net = bar_net_return(position, new_position, returns[t], cost_bps)``
        (simple return, fraction), ``reward = log(max(1 + net, 1e-12))``
        (net log return), ``equity *= 1 + net``, then ``t += 1``.
        ``truncated`` when ``t`` reaches ``T - 1`` (the observation at ``T - 1`` is
        still valid, but ``returns[T - 1]`` is never traded) or when
        ``episode_length`` steps have been taken; ``terminated`` only when equity
        drops to ``<= 0``.

    Raises:
        ValueError: in ``__init__`` for invalid arguments (message names the
            argument); in ``step`` for NaN or wrongly-sized actions.
        RuntimeError: if ``step`` is called before ``reset`` or after the episode
            has ended.
    """

    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": ["ansi", "human"],
        "render_fps": 4,
    }

    def __init__(
        self,
        features: Any,
        returns: Any,
        forecasts: Any | None = None,
        window: int = 8,
        cost_bps: float = 10.0,
        episode_length: int | None = None,
        random_start: bool = False,
        max_position: float = 1.0,
        render_mode: str | None = None,
    ) -> None:
        super().__init__()
        feats = _as_finite_array(features, "features", 2, np.float32)
        rets = _as_finite_array(returns, "returns", 1, np.float64)
        n_bars, n_features = feats.shape
        if n_features < 1:
            raise ValueError(
                f"features must have at least one column, got shape {feats.shape}"
            )
        if rets.shape[0] != n_bars:
            raise ValueError(
                f"returns length {rets.shape[0]} does not match features length {n_bars}"
            )
        fcst: np.ndarray | None = None
        n_forecasts = 0
        if forecasts is not None:
            fcst = _as_finite_array(forecasts, "forecasts", 2, np.float32)
            if fcst.shape[0] != n_bars:
                raise ValueError(
                    f"forecasts length {fcst.shape[0]} does not match features length {n_bars}"
                )
            n_forecasts = fcst.shape[1]
            if n_forecasts < 1:
                raise ValueError(
                    f"forecasts must have at least one column, got shape {fcst.shape}"
                )

        if not _is_int(window):
            raise ValueError(f"window must be an int, got {window!r}")
        window = int(window)
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if n_bars < window + 1:
            raise ValueError(
                f"window={window} is too large for {n_bars} bars: need at least window + 1 bars "
                "(features/returns length T >= window + 1)"
            )
        try:
            cost = float(cost_bps)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"cost_bps must be a number, got {cost_bps!r}") from exc
        if not math.isfinite(cost) or cost < 0.0:
            raise ValueError(f"cost_bps must be a finite number >= 0, got {cost_bps!r}")
        try:
            max_pos = float(max_position)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"max_position must be a number, got {max_position!r}"
            ) from exc
        if not (0.0 < max_pos <= 1.0):
            raise ValueError(f"max_position must be in (0, 1], got {max_position!r}")
        if episode_length is not None:
            if not _is_int(episode_length):
                raise ValueError(
                    f"episode_length must be an int or None, got {episode_length!r}"
                )
            episode_length = int(episode_length)
            if episode_length < 1:
                raise ValueError(
                    f"episode_length must be >= 1 or None, got {episode_length}"
                )
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}"
            )

        self._features = feats
        self._returns = rets
        self._forecasts = fcst
        self.window = window
        self.cost_bps = cost
        self.episode_length = episode_length
        self.random_start = bool(random_start)
        self.max_position = max_pos
        self.render_mode = render_mode
        self.n_bars = n_bars
        self.n_features = n_features
        self.n_forecasts = n_forecasts

        self._first_start = window - 1
        self._last_index = n_bars - 1  # episode truncates when t reaches this index
        if episode_length is None:
            last_start = self._last_index - 1
        else:
            last_start = self._last_index - episode_length
        self._last_start = max(self._first_start, last_start)

        self._n_window = window * n_features
        self._obs_dim = self._n_window + n_forecasts + 1
        self.action_space = spaces.Box(low=-1.0, high=1.0, shape=(1,), dtype=np.float32)
        self.observation_space = spaces.Box(
            low=-np.inf, high=np.inf, shape=(self._obs_dim,), dtype=np.float32
        )

        self._t = -1
        self._start = -1
        self._steps = 0
        self._position = 0.0
        self._equity = 1.0
        self._done = True
        self._last_net = 0.0
        self._last_cost = 0.0

    # ------------------------------------------------------------------ state
    @property
    def t(self) -> int:
        """Current bar index (the index of the latest observation); -1 before reset."""
        return self._t

    @property
    def position(self) -> float:
        """Currently held position, fraction of equity in [-max_position, max_position]."""
        return self._position

    @property
    def equity(self) -> float:
        """Portfolio equity relative to 1.0 at reset."""
        return self._equity

    # ---------------------------------------------------------------- helpers
    def _observation(self) -> np.ndarray:
        t = self._t
        obs = np.empty(self._obs_dim, dtype=np.float32)
        obs[: self._n_window] = self._features[t - self.window + 1 : t + 1].reshape(-1)
        if self._forecasts is not None:
            obs[self._n_window : self._n_window + self.n_forecasts] = self._forecasts[t]
        obs[-1] = self._position
        return obs

    def _info(self) -> dict[str, Any]:
        return {
            "t": self._t,
            "position": self._position,
            "equity": self._equity,
            "net_return": self._last_net,
            "cost": self._last_cost,
        }

    # -------------------------------------------------------------------- API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new episode with zero position and equity 1.0.

        The start index is ``window - 1``, or, with ``random_start``, drawn
        uniformly from ``[window - 1, last_start]`` using ``self.np_random``.
        ``options`` is accepted for API compatibility and ignored.

        Returns:
            ``(observation, info)``; ``info`` has keys ``t``, ``position``,
            ``equity``, ``net_return`` (0.0) and ``cost`` (0.0).
        """
        super().reset(seed=seed)
        if self.random_start and self._last_start > self._first_start:
            start = int(
                self.np_random.integers(self._first_start, self._last_start + 1)
            )
        else:
            start = self._first_start
        self._start = start
        self._t = start
        self._steps = 0
        self._position = 0.0
        self._equity = 1.0
        self._last_net = 0.0
        self._last_cost = 0.0
        self._done = False
        if self.render_mode == "human":
            self.render()
        return self._observation(), self._info()

    def step(
        self, action: Any
    ) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Rebalance to the target position, hold it for one bar, advance ``t``.

        Args:
            action: array-like with exactly one element, the target position in
                [-1, 1] (values outside are clipped); the applied position is
                ``clip(action, -1, 1) * max_position``.

        Returns:
            ``(observation, reward, terminated, truncated, info)`` where reward is
            the net log return of the bar, and ``info`` has ``t`` (new index),
            ``position``, ``equity``, ``net_return`` (simple net return, fraction)
            and ``cost`` (cost as a fraction of equity).

        Raises:
            ValueError: if the action is NaN or does not have exactly one element.
            RuntimeError: if called before ``reset`` or after the episode ended.
        """
        if self._done:
            raise RuntimeError(
                "step() called on a finished or un-reset episode; call reset() first"
            )
        act = np.asarray(action, dtype=np.float64)
        if act.size != 1:
            raise ValueError(
                f"action must contain exactly one element, got shape {act.shape}"
            )
        target = float(act.reshape(-1)[0])
        if math.isnan(target):
            raise ValueError("action contains NaN")
        target = min(1.0, max(-1.0, target))
        new_pos = target * self.max_position

        prev_pos = self._position
        net = bar_net_return(
            prev_pos, new_pos, float(self._returns[self._t]), self.cost_bps
        )
        growth = 1.0 + net
        reward = math.log1p(net) if growth > _MIN_GROWTH else math.log(_MIN_GROWTH)
        self._equity *= growth
        self._position = new_pos
        self._last_net = net
        self._last_cost = self.cost_bps * BPS * abs(new_pos - prev_pos)
        self._t += 1
        self._steps += 1

        terminated = self._equity <= 0.0
        truncated = self._t >= self._last_index or (
            self.episode_length is not None and self._steps >= self.episode_length
        )
        self._done = terminated or truncated
        obs = self._observation()
        if self.render_mode == "human":
            self.render()
        return obs, reward, bool(terminated), bool(truncated), self._info()

    def render(self) -> str | None:
        """Describe the current state: ``"ansi"`` returns a string, ``"human"`` prints it."""
        if self.render_mode is None:
            return None
        text = (
            f"t={self._t} position={self._position:+.4f} equity={self._equity:.6f} "
            f"net_return={self._last_net:+.6f} cost={self._last_cost:.6f}"
        )
        if self.render_mode == "ansi":
            return text
        print(text)
        return None
