"""The trading environment's data and settings, defined once (fields, defaults, units and docs).

:class:`TradingEnvConfig` is the single definition of the keyword arguments taken by
:class:`raytrade_envs.TradingEnv`, :class:`raytrade_envs.VecTradingEnv`,
``gymnasium.make("raytrade_envs/Trading-v0", **kwargs)`` and RLlib ``env_config`` dicts; the
environments build it with :meth:`TradingEnvConfig.from_args` and
:class:`raytrade_envs.trading_env.EnvCore` validates it.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any

from raytrade_envs.observation import DEFAULT_CACHE_MAX_BYTES

__all__ = ["TradingEnvConfig"]


@dataclass(frozen=True, eq=False)  # eq=False: fields hold arrays (and == on arrays is elementwise)
class TradingEnvConfig:
    """The data and settings of a trading environment, as given (validated by ``EnvCore``).

    Attributes:
        features: ``(T, F)`` already-scaled causal features (row ``t`` uses only bars ``<= t``);
            stored as float32. Required.
        returns: ``(T,)`` for one asset or ``(T, A)`` for a portfolio; ``returns[t] =
            ln(close[t+1] / close[t])`` (natural log, fraction), earned by the target chosen at
            the close of ``t``. Stored as float64. Required.
        forecasts: optional ``(T, K)`` forecaster outputs available at the close of ``t``
            (probabilities, expected return, uncertainty, embedding ...); appended to the
            observation; stored as float32. Default ``None``.
        gap_returns: optional, shape of ``returns``; ``ln(open[t+1] / close[t])``. Given, the target
            chosen at the close of ``t`` fills at the open of ``t + 1``: the previous position
            earns the gap, the new one ``ln(close[t+1] / open[t+1]) = returns - gap_returns``.
            ``None`` (default): fills at ``close[t]``.
        volatility: optional, shape of ``returns``, >= 0; per-bar volatility known at ``t``
            (fraction, e.g. std of 1-bar log returns) for slippage. ``None`` (default): no slippage.
        window: feature rows per observation (bars ``t - window + 1 .. t``), >= 1. Default 8.
        cost_bps: transaction cost in basis points (1e-4) of traded notional, >= 0. Default 10.0.
        slippage_vol_mult: slippage cost fraction per unit traded = ``slippage_vol_mult *
            volatility[t]``, >= 0 (needs ``volatility`` to have an effect). Default 0.0.
        max_position: in ``(0, 1]``. One asset: cap on ``|position|``; portfolio: cap on the gross
            exposure ``sum_a |position_a|``. Default 1.0.
        allow_short: ``False`` maps negative targets to 0 (long-only). Default ``True``.
        episode_length: maximum steps per episode; ``None`` (default) runs until the data runs out.
        random_start: draw each episode's start uniformly from ``[window - 1, last_start]``
            with the env's ``np_random`` (``last_start`` leaves room for ``episode_length`` steps,
            or one step without it); otherwise (default) every episode starts at ``window - 1``.
            ``reset(options={"start": s})`` forces a start.
        ruin_equity: in ``[0, 1)``, a fraction of the starting equity (1.0). The episode
            *terminates* when equity ``<= ruin_equity``. The default 0.0 ends it only when the
            account is wiped out (equity <= 0), e.g. by a ruinous cost or a leveraged loss.
        reward: one of :data:`raytrade_envs.rewards.REWARDS`: ``"log_return"`` (default),
            ``"differential_sharpe"``, ``"drawdown_penalty"``, ``"cost_penalty"``.
        reward_params: parameters of the reward (e.g. ``{"eta": 0.01}``, ``{"penalty": 1.0}``);
            unknown keys raise ``ValueError`` naming them. Default ``None`` (the scheme's defaults).
        invalid_action: ``"clip"`` (default): actions outside ``[-1, 1]`` (and ``+-inf``) are
            clipped; ``"raise"``: they raise ``ValueError`` naming the value. NaN always raises.
        account_observation: append unrealised P&L and drawdown to the observation. Default ``True``.
        obs_cache_max_bytes: precompute the static part of all observations when the ``(T, dim)``
            float32 table fits in this many bytes (default 256 MiB); otherwise build per step.
        tradable: optional bool array of the shape of ``returns``; ``False`` where the order for an asset
            decided at the close of ``t`` cannot fill (no bar, not yet listed, past its warm-up ...): the book
            keeps its units in that asset at that bar and trades the others, exactly as
            :func:`raytrade_envs.accounting.simulate` with ``tradable=`` (module docstring there, "Orders that
            cannot fill"); ``info["target"]`` then shows the effective targets (the drifted weight kept where the
            order could not fill) and ``info["order"]`` the targets asked for. ``None`` (default): every order
            fills, and the env behaves exactly as without the field (no ``"order"`` key in ``info``).
        weight_limits: optional portfolio exposure limits ``{"long_only", "max_weight", "max_gross",
            "max_net"}`` (all four keys; the fields of ``raytrade.config.PortfolioConfig``). Given, the
            action -> target mapping is ``project_weights(clip(action, -1, 1), **weight_limits)``
            (:func:`raytrade_envs.actions.project_weights`, THE mapping to exposure limits), replacing the
            ``max_position`` / ``allow_short`` mapping, which must then stay at their defaults (1.0, True).
            ``None`` (default): the ``max_position`` / ``allow_short`` mapping of :mod:`raytrade_envs.actions`.

    Invalid values raise ``ValueError`` naming the field when an environment is built from the
    config (not here); the config keeps the caller's objects as given.
    """

    features: Any
    returns: Any
    forecasts: Any | None = None
    gap_returns: Any | None = None
    volatility: Any | None = None
    window: int = 8
    cost_bps: float = 10.0
    slippage_vol_mult: float = 0.0
    max_position: float = 1.0
    allow_short: bool = True
    episode_length: int | None = None
    random_start: bool = False
    ruin_equity: float = 0.0
    reward: str = "log_return"
    reward_params: dict[str, Any] | None = None
    invalid_action: str = "clip"
    account_observation: bool = True
    obs_cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES
    tradable: Any | None = None
    weight_limits: dict[str, Any] | None = None

    def __repr__(self) -> str:  # arrays as their shapes, not their values
        parts = []
        for name in self.field_names():
            value = getattr(self, name)
            shape = getattr(value, "shape", None)
            parts.append(f"{name}=<array {tuple(shape)}>" if shape is not None else f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The field names, in order (``features`` and ``returns`` first)."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_args(cls, owner: str, *args: Any, **kwargs: Any) -> TradingEnvConfig:
        """The config from an environment's constructor arguments (positional in field order, or keywords);
        Python's own argument binding, with ``owner`` in the messages and the closest field for a misspelt keyword.

        Args:
            owner: the constructor's name for error messages, e.g. ``"TradingEnv"``.

        Raises:
            TypeError: ``"<owner>() got an unexpected keyword argument '<name>'"`` (with ``did you mean`` when a
                field name is close), too many positional arguments, a field given twice, or ``features`` /
                ``returns`` missing.
        """
        names = cls.field_names()
        unknown = [key for key in kwargs if key not in names]
        if unknown:
            close = difflib.get_close_matches(unknown[0], names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keywords: {', '.join(names)}"
            raise TypeError(f"{owner}() got an unexpected keyword argument {unknown[0]!r}{hint}")
        try:
            return cls(*args, **kwargs)
        except TypeError as exc:  # the dataclass's own message, naming the environment instead
            raise TypeError(str(exc).replace(f"{cls.__name__}.__init__()", f"{owner}()")) from None
