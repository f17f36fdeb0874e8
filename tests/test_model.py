"""CNN+LSTM forecaster shapes, training signal and the inference bundle round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raytrade.errors import ConfigError
from raytrade.models import CNNLSTMForecaster, build_model


def test_forward_shapes_and_forecast_units():
    model = CNNLSTMForecaster(n_features=13, conv_channels=4, kernel_sizes=(3, 5), lstm_hidden=8, return_scale=0.02)
    x = torch.randn(7, 32, 13)
    logits, ret_z = model(x)
    assert logits.shape == (7, 3) and ret_z.shape == (7,)
    out = model.eval().forecast(x)
    torch.testing.assert_close(out["probs"].sum(-1), torch.ones(7))
    torch.testing.assert_close(out["expected_return"], model(x)[1] * 0.02)


def test_window_is_read_whole_and_later_bars_matter_only_through_the_window():
    torch.manual_seed(0)
    model = CNNLSTMForecaster(n_features=3, conv_channels=4, lstm_hidden=8).eval()
    x = torch.randn(1, 20, 3)
    y = x.clone()
    y[0, 0] += 5.0  # the oldest bar of the window changes the output (the model sees the whole window)
    assert not torch.allclose(model(x)[0], model(y)[0])


def test_one_step_of_training_reduces_loss_on_a_batch():
    torch.manual_seed(0)
    model = CNNLSTMForecaster(n_features=5, conv_channels=4, lstm_hidden=8)
    x, y = torch.randn(64, 16, 5), torch.randint(0, 3, (64,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.cross_entropy(model(x)[0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.9


def test_bad_shapes_and_names_are_rejected():
    with pytest.raises(ValueError, match="odd"):
        CNNLSTMForecaster(n_features=3, kernel_sizes=(4,))
    with pytest.raises(ValueError, match="batch, lookback, n_features"):
        CNNLSTMForecaster(n_features=3)(torch.randn(10, 3))
    with pytest.raises(ConfigError, match="model.name"):
        build_model("transformer", n_features=3)


def test_signal_positions_are_bounded():
    from raytrade.models.bundle import signal_positions

    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2]])
    np.testing.assert_allclose(signal_positions(probs, 0.5), [-0.35, 0.35, 0.0])
