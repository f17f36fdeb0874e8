"""Vectorised trading environment: ``N`` independent episodes stepped at once with numpy.

:class:`VecTradingEnv` runs the same market, observation, action and reward seams as
:class:`raytrade_envs.TradingEnv` over arrays of shape ``(N, ...)``; ``step`` has no Python loop
over the environments. With the same starts and actions it produces the same rewards,
observations and infos as ``N`` separate ``TradingEnv`` instances (to floating-point rounding).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from raytrade_envs._validate import as_int
from raytrade_envs.accounting import MIN_GROWTH
from raytrade_envs.env_config import TradingEnvConfig
from raytrade_envs.rewards import make_reward
from raytrade_envs.trading_env import EnvCore

__all__ = ["VecTradingEnv"]

_LOG_MIN_GROWTH = math.log(MIN_GROWTH)
_INFO_KEYS = ("t", "position", "target", "equity", "net_return", "cost", "traded", "costs_paid", "drawdown",
              "unrealised_pnl")


class VecTradingEnv(VectorEnv):
    """``num_envs`` independent :class:`TradingEnv` episodes over the same data, stepped with numpy.

    Args:
        num_envs: ``N`` >= 1.
        **kwargs: the data and settings, as keywords: the fields of
            :class:`~raytrade_envs.env_config.TradingEnvConfig` (as for :class:`raytrade_envs.TradingEnv`;
            same meanings, units, defaults and errors).
        render_mode: ``None`` or ``"ansi"`` (``render()`` returns one string per env).

    Spaces:
        ``single_action_space = Box(-1, 1, (A,), float32)``, ``action_space`` its ``(N, A)`` batch;
        ``single_observation_space = Box(-inf, inf, (dim,), float32)`` (layout of ``TradingEnv``),
        ``observation_space`` its ``(N, dim)`` batch.

    Randomness: one generator, ``self.np_random``, seeded by ``reset(seed=...)``, draws the
    starts of all envs (at reset, ``N`` draws in env order; at each autoreset, one draw per
    resetting env in env order). Everything is deterministic given the seed and the actions.
    ``reset(options={"starts": array of N ints})`` forces the starts of that reset (autoresets
    still draw, or use ``window - 1`` without ``random_start``).

    Autoreset: ``metadata["autoreset_mode"] = AutoresetMode.NEXT_STEP`` (gymnasium's default).
    When env ``i`` returns ``terminated`` or ``truncated``, its *next* ``step`` ignores
    ``actions[i]``, resets it and returns its reset observation with reward 0.0,
    ``terminated = truncated = False`` and the reset info values.

    ``step`` returns ``(obs (N, dim) float32, rewards (N,) float64, terminations (N,) bool,
    truncations (N,) bool, infos)`` where ``infos`` maps each ``TradingEnv`` info key (``t``,
    ``position`` and ``target`` -- ``(N,)`` for one asset, ``(N, A)`` for a portfolio, which also has
    ``positions`` -- ``equity``, ``net_return``, ``cost``, ``traded``, ``costs_paid``, ``drawdown``,
    ``unrealised_pnl``) to an array over envs, plus the gymnasium mask ``"_<key>"`` (all True; one
    shared array per call). Arrays are fresh copies, safe to keep. With ``tradable``, ``target`` holds the
    effective targets (units kept where an order cannot fill) and ``order`` the targets asked for, as in
    ``TradingEnv``; with ``weight_limits`` the actions map through ``project_weights`` (the same mapping).

    Raises:
        TypeError: for an unknown keyword (the message names it) or a missing ``features``/``returns``.
        ValueError: for bad arguments (as ``TradingEnv``), actions of the wrong shape, NaN actions,
            or out-of-range actions with ``invalid_action="raise"`` (nothing is stepped then).
        RuntimeError: if ``step`` is called before ``reset``.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int, render_mode: str | None = None, **kwargs: Any) -> None:
        self.num_envs = as_int(num_envs, "num_envs", 1)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        core = EnvCore(TradingEnvConfig.from_args(type(self).__name__, **kwargs))
        self._core = core
        self._market = core.market
        self._obs = core.observations
        self._mapper = core.actions
        self._reward = make_reward(core.reward_name, core.reward_params)
        self._plain_reward = self._reward.plain_log_return
        self.render_mode = render_mode
        self.n_assets = core.n_assets
        self.window = core.window
        self.episode_length = core.episode_length
        self.ruin_equity = core.ruin_equity
        self.single_action_space = core.action_space()
        self.single_observation_space = core.observation_space()
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        n, a = self.num_envs, self.n_assets
        self._t = np.full(n, -1, dtype=np.int64)
        self._steps = np.zeros(n, dtype=np.int64)
        self._pos = np.zeros((n, a))
        self._target = np.zeros((n, a))
        self._tradable = core.has_tradable
        self._order = np.zeros((n, a))
        self._equity = np.ones(n)
        self._peak = np.ones(n)
        self._entry = np.ones(n)
        self._drawdown = np.zeros(n)
        self._unrealised = np.zeros(n)
        self._costs_paid = np.zeros(n)
        self._net = np.zeros(n)
        self._cost = np.zeros(n)
        self._traded = np.zeros(n)
        self._needs_reset = np.zeros(n, dtype=bool)
        self._started = False
        self._reward.reset_batch(n)

    # ------------------------------------------------------------ helpers
    def _draw_starts(self, k: int) -> np.ndarray:
        core = self._core
        if core.random_start and core.last_start > core.first_start:
            return self.np_random.integers(core.first_start, core.last_start + 1, size=k)
        return np.full(k, core.first_start, dtype=np.int64)

    def _reset_envs(self, mask: np.ndarray | slice, starts: np.ndarray) -> None:
        """Put the envs selected by ``mask`` at ``starts`` with a flat book and cleared state."""
        self._t[mask] = starts
        self._steps[mask] = 0
        self._pos[mask] = 0.0
        self._target[mask] = 0.0
        self._order[mask] = 0.0
        self._equity[mask] = 1.0
        self._peak[mask] = 1.0
        self._entry[mask] = 1.0
        self._drawdown[mask] = 0.0
        self._unrealised[mask] = 0.0
        self._costs_paid[mask] = 0.0
        self._net[mask] = 0.0
        self._cost[mask] = 0.0
        self._traded[mask] = 0.0

    def _observations(self) -> np.ndarray:
        return self._obs.build_batch(self._t, self._pos, self._unrealised, self._drawdown)

    def _infos(self) -> dict[str, Any]:
        n = self.num_envs
        infos: dict[str, Any] = {
            "t": self._t.copy(),
            "position": self._pos[:, 0].copy() if self._core.single else self._pos.copy(),
            "target": self._target[:, 0].copy() if self._core.single else self._target.copy(),
            "equity": self._equity.copy(),
            "net_return": self._net.copy(),
            "cost": self._cost.copy(),
            "traded": self._traded.copy(),
            "costs_paid": self._costs_paid.copy(),
            "drawdown": self._drawdown.copy(),
            "unrealised_pnl": self._unrealised.copy(),
        }
        if not self._core.single:
            infos["positions"] = self._pos.copy()
        if self._tradable:
            infos["order"] = self._order[:, 0].copy() if self._core.single else self._order.copy()
        mask = np.ones(n, dtype=bool)
        for key in list(infos):
            infos["_" + key] = mask
        return infos

    # ---------------------------------------------------------------- API
    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every env (flat books, equity 1.0) and return ``(obs (N, dim), infos)``.

        Args:
            seed: an int (or a list of ints, combined into one seed sequence) seeding
                ``self.np_random``; ``None`` keeps the current generator.
            options: ``{"starts": (N,) ints}`` forces the starts, each in ``[window - 1, last_start]``.

        Raises:
            ValueError: for bad ``starts``.
        """
        if isinstance(seed, (list, tuple)):
            self._np_random = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(s) for s in seed])))
            self._np_random_seed = None
        else:
            super().reset(seed=seed)
        n = self.num_envs
        if options and "starts" in options:
            starts = np.asarray(options["starts"])
            if starts.shape != (n,) or not np.issubdtype(starts.dtype, np.integer):
                raise ValueError(f"options['starts'] must be {n} ints, got {options['starts']!r}")
            core = self._core
            if starts.min() < core.first_start or starts.max() > core.last_start:
                raise ValueError(f"options['starts'] must lie in [{core.first_start}, {core.last_start}]")
            starts = starts.astype(np.int64)
        else:
            starts = self._draw_starts(n)
        self._reset_envs(slice(None), starts)
        self._needs_reset[:] = False
        self._reward.reset_batch(n)
        self._started = True
        return self._observations(), self._infos()

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every env by one bar (envs that finished last step are reset instead).

        Args:
            actions: ``(N, A)`` target positions in ``[-1, 1]`` (``(N,)`` accepted for ``A = 1``).

        Returns:
            ``(obs, rewards, terminations, truncations, infos)``; see the class docstring.
        """
        if not self._started:
            raise RuntimeError("step() called before reset(); call reset() first")
        act = np.asarray(actions)
        n = self.num_envs
        if act.ndim == 1 and self.n_assets == 1 and act.shape[0] == n:
            act = act.reshape(n, 1)
        if act.shape != (n, self.n_assets):
            raise ValueError(f"actions must have shape ({n}, {self.n_assets}), got shape {act.shape}")
        resetting = self._needs_reset
        any_reset = bool(resetting.any())
        if any_reset:
            act = np.where(resetting[:, None], 0.0, act)  # ignored actions must not raise
        new = self._mapper.map_batch(act)
        t = self._t
        prev = self._pos
        if self._tradable:  # untradable assets keep their units; `new` becomes the effective targets
            order = new
            net, cost, traded, held, new = self._market.step_batch_tradable(t, prev, order)
            self._order = order
        else:
            net, cost, traded, held = self._market.step_batch(t, prev, new)
        growth = 1.0 + net
        ruinous = growth <= MIN_GROWTH
        if ruinous.any():
            log_ret = np.log1p(np.where(ruinous, 0.0, net))
            log_ret[ruinous] = _LOG_MIN_GROWTH
        else:
            log_ret = np.log1p(net)
        before = self._equity
        equity = before * growth
        peak = np.maximum(self._peak, equity)
        drawdown = 1.0 - equity / peak
        if self.n_assets == 1:
            new1, prev1 = new[:, 0], prev[:, 0]
            flat = new1 == 0.0
            opened = (prev1 == 0.0) | ((new1 > 0.0) != (prev1 > 0.0))
        else:
            flat = ~new.any(axis=1)
            opened = (np.sign(new) != np.sign(prev)).any(axis=1)
        entry = np.where(opened, before, self._entry)
        with np.errstate(divide="ignore", invalid="ignore"):  # only envs being reset can have entry <= 0
            unrealised = np.where(flat, 0.0, equity / entry - 1.0)
        if self._plain_reward:
            rewards = log_ret
        else:
            dd_inc = np.maximum(drawdown - self._drawdown, 0.0)
            rewards = self._reward.batch(log_ret, cost, dd_inc)
        self._equity = equity
        self._peak = peak
        self._entry = entry
        self._pos = held
        self._target = new
        self._drawdown = drawdown
        self._unrealised = unrealised
        self._net = net
        self._cost = cost
        self._traded = traded
        self._costs_paid = self._costs_paid + cost
        self._t = t + 1
        self._steps = self._steps + 1
        terminated = equity <= self.ruin_equity
        truncated = self._t >= self._core.last_index
        if self.episode_length is not None:
            truncated |= self._steps >= self.episode_length
        if any_reset:
            idx = np.flatnonzero(resetting)
            self._reset_envs(idx, self._draw_starts(idx.size))
            self._reward.reset_where(resetting)
            rewards[idx] = 0.0  # rewards is a fresh array here (log1p or the scheme's output)
            terminated[idx] = False
            truncated[idx] = False
        self._needs_reset = terminated | truncated
        return self._observations(), rewards, terminated, truncated, self._infos()

    def render(self) -> tuple[str, ...] | None:
        """``"ansi"``: one state line per env (as ``TradingEnv.render``); ``None`` otherwise."""
        if self.render_mode is None:
            return None
        lines = []
        for i in range(self.num_envs):
            pos = ", ".join(f"{p:+.4f}" for p in self._pos[i])
            lines.append(
                f"env={i} t={self._t[i]} positions=[{pos}] equity={self._equity[i]:.6f} "
                f"net_return={self._net[i]:+.6f} cost={self._cost[i]:.6f} costs_paid={self._costs_paid[i]:.6f} "
                f"drawdown={self._drawdown[i]:.4f} unrealised_pnl={self._unrealised[i]:+.6f}"
            )
        return tuple(lines)
