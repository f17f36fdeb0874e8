"""Forecaster networks: shapes, units, MC dropout, training signal, config round trip, window causality."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import REPO
from raytrade.config import ModelConfig
from raytrade.errors import ConfigError
from raytrade.models import (
    MODELS,
    CNNLSTMForecaster,
    ForecasterBase,
    LinearForecaster,
    TransformerForecaster,
    build_from_config,
    build_model,
    model_kwargs_from_config,
)

N_FEATURES, LOOKBACK, SCALE = 5, 16, 0.02
NAMES = sorted(MODELS)


def small_config(name: str, dropout: float = 0.1) -> ModelConfig:
    return ModelConfig(name=name, lookback=LOOKBACK, conv_channels=4, kernel_sizes=(3, 5), lstm_hidden=8,
                       lstm_layers=2, bidirectional=True, attention_heads=2, embed_dim=8, transformer_dim=8,
                       transformer_layers=1, dropout=dropout)


def small_model(name: str, dropout: float = 0.1, seed: int = 0) -> ForecasterBase:
    torch.manual_seed(seed)
    return build_from_config(small_config(name, dropout), N_FEATURES, SCALE)


def expected_embed_dim(name: str) -> int:
    return N_FEATURES if name == "linear" else small_config(name).embed_dim


def batch(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, LOOKBACK, N_FEATURES, generator=torch.Generator().manual_seed(seed))


def all_modes(model: torch.nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


# ---- every registered model ------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes_with_and_without_features(name):
    model = small_model(name).eval()
    x = batch(7)
    logits, ret_z = model(x)
    assert logits.shape == (7, 3) and ret_z.shape == (7,)
    logits2, ret_z2, emb = model(x, return_features=True)
    assert emb.shape == (7, expected_embed_dim(name)) and model.embed_dim == expected_embed_dim(name)
    torch.testing.assert_close(logits, logits2)
    torch.testing.assert_close(ret_z, ret_z2)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_forecast_units(name):
    model = small_model(name).eval()
    x = batch()
    out = model.forecast(x)
    assert set(out) == {"probs", "expected_return", "embedding"}
    torch.testing.assert_close(out["probs"].sum(-1), torch.ones(len(x)))
    assert (out["probs"] >= 0).all()
    logits, ret_z, emb = model(x, return_features=True)
    torch.testing.assert_close(out["probs"], torch.softmax(logits, -1))
    torch.testing.assert_close(out["expected_return"], ret_z * SCALE)
    torch.testing.assert_close(out["embedding"], emb)
    assert float(model.return_scale) == pytest.approx(SCALE)


@pytest.mark.parametrize("name", NAMES)
def test_mc_dropout_spreads_when_dropout_is_on(name):
    model = small_model(name, dropout=0.3).eval()
    x = batch()
    out = model.forecast(x, mc_samples=16)
    b = len(x)
    assert out["probs"].shape == (b, 3) and out["probs_std"].shape == (b, 3)
    for key in ("expected_return", "return_std", "predictive_entropy", "mutual_information"):
        assert out[key].shape == (b,), key
    assert out["embedding"].shape == (b, expected_embed_dim(name))
    torch.testing.assert_close(out["probs"].sum(-1), torch.ones(b))
    assert (out["probs_std"] > 0).any() and (out["return_std"] > 0).all()
    ent, mi = out["predictive_entropy"], out["mutual_information"]
    assert (ent >= 0).all() and (ent <= math.log(3) + 1e-5).all()
    assert (mi >= 0).all() and (mi <= ent + 1e-6).all() and (mi > 0).any()
    # the embedding comes from the deterministic pass
    torch.testing.assert_close(out["embedding"], model(x, return_features=True)[2])


@pytest.mark.parametrize("name", NAMES)
def test_mc_dropout_without_dropout_equals_the_deterministic_pass(name):
    model = small_model(name, dropout=0.0)
    x = batch()
    det = model.forecast(x)
    mc = model.forecast(x, mc_samples=8)
    torch.testing.assert_close(mc["probs"], det["probs"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mc["expected_return"], det["expected_return"], atol=1e-6, rtol=1e-5)
    assert mc["probs_std"].abs().max() < 1e-5 and mc["return_std"].abs().max() < 1e-6
    assert mc["mutual_information"].abs().max() < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_mc_passes_reuse_the_fixed_encoder_part_without_changing_the_samples(name):
    """Running ``encode_fixed`` once must give the same MC samples as full passes on the repeated batch
    (same seed), i.e. the fixed part really holds no dropout; and ``encode`` is fixed -> rest."""
    from raytrade.models.base import shared_dropout_masks

    model = small_model(name, dropout=0.3).eval()
    x = batch()
    torch.testing.assert_close(model.encode(x), model.encode_from_fixed(model.encode_fixed(x)))
    with torch.no_grad():
        probs, rets = model._mc_passes(x, 4, seed=7)
        with shared_dropout_masks(model, 4, seed=7):
            logits, ret_z = model(x.repeat(4, 1, 1))
    torch.testing.assert_close(probs, torch.softmax(logits, -1).reshape(4, len(x), 3), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(rets, (ret_z * SCALE).reshape(4, len(x)), atol=1e-6, rtol=1e-4)
    assert (probs.std(0) > 0).any()  # dropout was on


@pytest.mark.parametrize("name", NAMES)
def test_mc_dropout_of_a_window_does_not_depend_on_the_batch_it_is_in(name):
    """With a seed, a window's MC outputs are the same alone, in a batch, or split across chunks (what makes a
    forecast served alone equal to the backtest's bulk one); other seeds give other samples."""
    model = small_model(name, dropout=0.3)
    x = batch()
    bulk = model.forecast(x, mc_samples=6, mc_seed=11)
    model.mc_max_rows = 12  # 2 windows per pass
    chunked = model.forecast(x, mc_samples=6, mc_seed=11)
    model.mc_max_rows = 65536
    for i in (0, 3, len(x) - 1):
        alone = model.forecast(x[i : i + 1], mc_samples=6, mc_seed=11)
        for key in ("probs", "return_std", "mutual_information", "probs_std"):
            torch.testing.assert_close(alone[key][0], bulk[key][i], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(chunked[key][i], bulk[key][i], atol=1e-5, rtol=1e-4)
    other = model.forecast(x, mc_samples=6, mc_seed=12)
    assert not torch.allclose(other["return_std"], bulk["return_std"])
    assert (bulk["return_std"] > 0).all()


def test_mc_dropout_from_several_threads_on_one_model_equals_one_at_a_time():
    """A threaded server (FastAPI's thread pool) runs MC passes of one model concurrently: each thread's
    dropout masks must apply to its own passes only."""
    from concurrent.futures import ThreadPoolExecutor

    model = small_model("cnn_lstm", dropout=0.3).eval()
    xs = [batch(seed=s) for s in range(8)]
    expected = [model.forecast(x, mc_samples=5, mc_seed=3)["return_std"] for x in xs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: model.forecast(x, mc_samples=5, mc_seed=3)["return_std"], xs * 3))
    for i, g in enumerate(got):
        torch.testing.assert_close(g, expected[i % len(xs)], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_forecast_restores_module_modes(name):
    model = small_model(name, dropout=0.2)
    x = batch()
    model.train()
    out = model.forecast(x, mc_samples=3)
    assert all(all_modes(model))
    # the deterministic part ran in eval mode even though the model was in train mode
    model.eval()
    torch.testing.assert_close(out["embedding"], model(x, return_features=True)[2])
    model.forecast(x, mc_samples=3)
    assert not any(all_modes(model))
    # a mixed state survives too, also when the MC passes raise
    model.dropout.train()
    before = all_modes(model)

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    model._mc_passes = boom
    with pytest.raises(RuntimeError, match="boom"):
        model.forecast(x, mc_samples=2)
    assert all_modes(model) == before


@pytest.mark.parametrize("name", NAMES)
def test_mc_dropout_in_chunks_when_the_batch_is_large(name):
    model = small_model(name, dropout=0.0)
    model.mc_max_rows = 10  # 6 rows x 5 samples -> one sample per pass
    x = batch()
    out = model.forecast(x, mc_samples=5)
    torch.testing.assert_close(out["probs"], model.forecast(x)["probs"], atol=1e-5, rtol=1e-5)
    assert out["return_std"].shape == (6,)
    empty = model.forecast(x[:0], mc_samples=3)  # an empty batch is fine too
    assert empty["probs"].shape == (0, 3) and empty["mutual_information"].shape == (0,)


@pytest.mark.parametrize("name", NAMES)
def test_adam_reduces_the_multitask_loss(name):
    model = small_model(name, dropout=0.0)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(64, LOOKBACK, N_FEATURES, generator=gen)
    signal = x[:, -1, 0] + 0.5 * x[:, -1, 1]  # learnable by every model, the linear one included
    y_class = torch.bucketize(signal, torch.tensor([-0.5, 0.5]))
    y_ret = SCALE * signal
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(30):
        logits, ret_z = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y_class) + torch.nn.functional.mse_loss(
            ret_z, y_ret / model.return_scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("name", NAMES)
def test_kwargs_round_trip_through_json(name):
    cfg = small_config(name)
    kwargs = MODELS[name].kwargs_from_config(cfg, N_FEATURES, SCALE)
    assert kwargs == model_kwargs_from_config(cfg, N_FEATURES, SCALE)
    restored = json.loads(json.dumps(kwargs))
    assert restored == kwargs and restored["return_scale"] == SCALE and restored["n_features"] == N_FEATURES
    torch.manual_seed(0)
    original = build_model(name, **kwargs).eval()
    rebuilt = build_model(name, **restored).eval()
    rebuilt.load_state_dict(original.state_dict())
    x = batch()
    for a, b in zip(original(x, return_features=True), rebuilt(x, return_features=True), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_shapes_are_rejected(name):
    model = small_model(name)
    with pytest.raises(ValueError, match=r"\(batch, lookback, n_features\)"):
        model(torch.randn(10, N_FEATURES))
    with pytest.raises(ValueError, match=r"\(batch, lookback, n_features\)"):
        model.forecast(torch.randn(2, LOOKBACK, N_FEATURES + 1))


# ---- CNN+LSTM specifics ----------------------------------------------------------------------
def test_cnn_lstm_accepts_lists_or_tuples_and_grows_with_kernels():
    def n_params(kernels):
        return sum(p.numel() for p in CNNLSTMForecaster(N_FEATURES, conv_channels=4, kernel_sizes=kernels,
                                                        lstm_hidden=8, attention_heads=2).parameters())

    assert n_params((3, 5)) == n_params([3, 5])
    assert n_params([3]) < n_params([3, 5]) < n_params([3, 5, 7]) < n_params([3, 5, 7, 11])


def test_cnn_lstm_rejects_bad_kernels_and_heads():
    for kernels in ((4,), (3, 0), (-3,), ()):
        with pytest.raises(ValueError, match="odd"):
            CNNLSTMForecaster(N_FEATURES, kernel_sizes=kernels)
    with pytest.raises(ValueError, match="attention_heads"):
        CNNLSTMForecaster(N_FEATURES, lstm_hidden=6, bidirectional=False, attention_heads=4)
    CNNLSTMForecaster(N_FEATURES, lstm_hidden=6, bidirectional=True, attention_heads=4)  # 12 % 4 == 0
    with pytest.raises(ValueError, match="attention_heads"):
        TransformerForecaster(N_FEATURES, transformer_dim=10, attention_heads=4)


def test_cnn_lstm_mean_pool_variant():
    model = CNNLSTMForecaster(N_FEATURES, conv_channels=4, kernel_sizes=[3], lstm_hidden=8, attention_heads=2,
                              embed_dim=6, pool="mean").eval()
    assert model(batch(), return_features=True)[2].shape == (6, 6)


def test_cnn_lstm_reads_the_whole_window():
    model = small_model("cnn_lstm").eval()
    x = batch(1)
    y = x.clone()
    y[0, 0] += 5.0  # the OLDEST bar of the window changes the output
    assert not torch.allclose(model(x)[0], model(y)[0])


def test_linear_reads_only_the_last_bar():
    model = small_model("linear").eval()
    assert isinstance(model, LinearForecaster)
    x = batch(3)
    y = x.clone()
    y[:, :-1] = torch.randn_like(y[:, :-1]) * 10  # every bar but the last
    for a, b in zip(model(x, return_features=True), model(y, return_features=True), strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(model(x, return_features=True)[2], x[:, -1])
    y[:, -1] += 1.0
    assert not torch.allclose(model(x)[0], model(y)[0])


def test_learned_positions_transformer():
    model = TransformerForecaster(N_FEATURES, transformer_dim=8, transformer_layers=1, attention_heads=2,
                                  positional="learned", max_len=LOOKBACK).eval()
    assert model(batch())[0].shape == (6, 3)
    with pytest.raises(ValueError, match="max_len"):
        model(torch.randn(1, LOOKBACK + 1, N_FEATURES))


def test_unknown_model_name_is_a_config_error():
    # a validated config cannot name another model (test_config_model_names_are_the_registry); the registry still
    # names the field for a name that reaches it another way (a bundle's metadata, an unvalidated config)
    unvalidated = ModelConfig.model_construct(name="nope")
    with pytest.raises(ConfigError, match="model.name"):
        build_model("nope", n_features=3)
    with pytest.raises(ConfigError, match="model.name"):
        model_kwargs_from_config(unvalidated, 3, 0.01)
    with pytest.raises(ConfigError, match="cnn_lstm"):
        build_from_config(unvalidated, 3, 0.01)


def test_signal_positions_are_bounded():
    from raytrade.models.bundle import signal_positions

    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2]])
    np.testing.assert_allclose(signal_positions(probs, 0.5), [-0.35, 0.35, 0.0])


def test_config_model_names_are_the_registry():
    from typing import get_args

    from raytrade.config import ModelName, load_config
    from raytrade.models.registry import MODELS

    assert set(get_args(ModelName)) == set(MODELS)
    with pytest.raises(ConfigError, match="model.name"):
        load_config(REPO / "jobs" / "configs" / "smoke.yaml", {"model": {"name": "resnet"}})
