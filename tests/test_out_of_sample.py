"""A registered forecaster is reused only on the train split it was trained on (issue 15, part 6).

``raytrade backtest`` refused a champion trained on another train split; ``raytrade agents`` reused it whenever
the feature columns matched, so agents run on other or longer data were selected and backtested on the
forecaster's outputs for bars it had trained on. Both now go through one check,
:func:`raytrade.stages.common.require_same_train_split`. These tests need no Ray and no MLflow server: the
scalers are fitted on real bars, and the registry lookup of the agents stage is replaced by the bundle it
would return. (The backtest stage's refusal is exercised end to end in tests/test_pipeline_e2e.py.)
"""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

import pandas as pd
import pytest

from raytrade.config import parse_config
from raytrade.errors import ConfigError
from raytrade.features.scaler import FeatureScaler
from raytrade.runtime import Progress

COLUMNS = ["close", "volume"]
TRAIN_FRACTION = 0.7


def _scaler(bars: pd.DataFrame, n_bars: int) -> FeatureScaler:
    """The scaler a run on the last ``n_bars`` bars fits: on the first 70 % of them (its train split)."""
    last = bars.iloc[-n_bars:]
    return FeatureScaler(COLUMNS).fit(last.iloc[: int(TRAIN_FRACTION * n_bars)])


@pytest.fixture(scope="module")
def scalers(btc_bars: pd.DataFrame) -> dict[str, FeatureScaler]:
    # the smoke config's 3,000 bars, and the same data with 500 more bars (data.max_bars: 3500)
    return {"trained": _scaler(btc_bars, 3000), "same": _scaler(btc_bars, 3000), "longer": _scaler(btc_bars, 3500)}


def _bundle(scaler: FeatureScaler) -> SimpleNamespace:
    return SimpleNamespace(scaler=scaler)


def _prepared(scaler: FeatureScaler) -> SimpleNamespace:
    return SimpleNamespace(scaler=scaler, feature_columns=list(scaler.columns))


def _expected_error(trained: FeatureScaler, now: FeatureScaler, version: str) -> str:
    return (rf"^split: raytrade-forecaster@champion \(version {version}\) was trained on bars up to "
            rf"{re.escape(str(trained.fit_end))}, but this config's train split ends at {re.escape(str(now.fit_end))}; "
            r"the test split would not be out of sample for the registered models\.")


def test_the_check_refuses_another_train_split_in_one_line(scalers):
    from raytrade.stages.common import require_same_train_split

    cfg = parse_config({})
    trained, longer = scalers["trained"], scalers["longer"]
    # 500 more bars at the start move the 70 % train cut 150 bars earlier: the new val/test hold bars
    # the champion was trained on
    assert pd.Timestamp(longer.fit_end) < pd.Timestamp(trained.fit_end)
    require_same_train_split(cfg, _bundle(trained), "4", _prepared(scalers["same"]))  # same split: no error
    with pytest.raises(ConfigError, match=_expected_error(trained, longer, "4")) as err:
        require_same_train_split(cfg, _bundle(trained), "4", _prepared(longer))
    assert "\n" not in str(err.value)


def test_the_agents_stage_refuses_a_champion_trained_on_another_split(scalers, monkeypatch, tmp_path):
    """Same feature columns, longer data: the stage must stop, not reuse the champion (nor silently retrain)."""
    from raytrade import tracking
    from raytrade.stages import agents

    trained, longer = scalers["trained"], scalers["longer"]
    monkeypatch.setattr(tracking, "load_model_dir", lambda name, alias, uri: (_bundle(trained), "4", "run-id"))

    def no_training(*args, **kwargs):
        raise AssertionError("the agents stage must not train a forecaster here")

    monkeypatch.setattr(agents, "train_forecaster", no_training)
    cfg = parse_config({})
    out = io.StringIO()
    with pytest.raises(ConfigError, match=_expected_error(trained, longer, "4")):
        agents.champion_or_new_forecaster(cfg, _prepared(longer), tmp_path, "uri", Progress(total=1, stream=out), {})
    # the split it was trained on: the champion is reused
    bundle, version = agents.champion_or_new_forecaster(cfg, _prepared(scalers["same"]), tmp_path, "uri",
                                                        Progress(total=1, stream=out), {})
    assert (bundle.scaler, version) == (trained, "4")
    assert "raytrade-forecaster@champion (version 4)" in out.getvalue()


def test_the_agents_stage_still_trains_a_forecaster_for_other_feature_columns(scalers, monkeypatch, tmp_path):
    from raytrade import tracking
    from raytrade.stages import agents

    other = FeatureScaler(["close"]).fit(pd.DataFrame({"close": [1.0, 2.0], "timestamp": pd.to_datetime(
        ["2019-01-01", "2019-01-02"], utc=True)}))
    monkeypatch.setattr(tracking, "load_model_dir", lambda name, alias, uri: (_bundle(other), "4", "run-id"))
    monkeypatch.setattr(agents, "train_forecaster",
                        lambda *args, **kwargs: SimpleNamespace(bundle="new bundle", version="5"))
    cfg = parse_config({})
    got = agents.champion_or_new_forecaster(cfg, _prepared(scalers["longer"]), tmp_path, "uri",
                                            Progress(total=1, stream=io.StringIO()), {})
    assert got == ("new bundle", "5")
