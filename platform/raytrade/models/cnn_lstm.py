"""CNN+LSTM forecaster: parallel Conv1d branches over the window, an LSTM over their output,
and two heads (buy/hold/sell logits and the forward return).

Architecture after the CNN-LSTM hybrids for price forecasting (e.g. Livieris, Pintelas & Pintelas,
"A CNN-LSTM model for gold price time-series forecasting", Neural Computing and Applications,
2020), with multi-kernel branches as in Inception-style temporal convolutions.
"""

from __future__ import annotations

import torch
from torch import nn


class CNNLSTMForecaster(nn.Module):
    """Multi-kernel Conv1d + LSTM forecaster with a classification and a regression head.

    Args:
        n_features: feature columns per bar.
        conv_channels: output channels of EACH conv branch.
        kernel_sizes: one branch per (odd) kernel size, in bars; "same" padding keeps the length.
            Convolutions only mix bars inside the input window, which ends at t, so nothing after t.
        lstm_hidden: LSTM hidden size; lstm_layers: stacked layers.
        dropout: dropout before the heads (also kept on for MC-dropout in later versions).
        n_classes: 3 (sell, hold, buy).
        return_scale: std of the training forward returns (log units); the regression head is trained
            on returns divided by it and :meth:`forecast` multiplies it back.

    Input ``x``: float32 ``(batch, lookback, n_features)``.
    ``forward`` returns ``(logits (batch, n_classes), return_z (batch,))``.
    """

    def __init__(
        self,
        n_features: int,
        conv_channels: int = 16,
        kernel_sizes: tuple[int, ...] = (3, 5, 7),
        lstm_hidden: int = 32,
        lstm_layers: int = 1,
        dropout: float = 0.1,
        n_classes: int = 3,
        return_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if any(k % 2 == 0 or k < 1 for k in kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd positive integers, got {kernel_sizes}")
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv1d(n_features, conv_channels, k, padding=k // 2), nn.GELU())
            for k in kernel_sizes
        )
        self.lstm = nn.LSTM(
            conv_channels * len(kernel_sizes), lstm_hidden, num_layers=lstm_layers, batch_first=True,
            dropout=dropout if lstm_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.class_head = nn.Linear(lstm_hidden, n_classes)
        self.return_head = nn.Linear(lstm_hidden, 1)
        self.register_buffer("return_scale", torch.tensor(float(return_scale)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 3:
            raise ValueError(f"expected x of shape (batch, lookback, n_features), got {tuple(x.shape)}")
        z = x.transpose(1, 2)  # (batch, n_features, lookback)
        z = torch.cat([branch(z) for branch in self.branches], dim=1)  # (batch, C*k, lookback)
        out, _ = self.lstm(z.transpose(1, 2))  # (batch, lookback, hidden)
        h = self.dropout(out[:, -1])
        return self.class_head(h), self.return_head(h).squeeze(-1)

    @torch.no_grad()
    def forecast(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inference: ``probs`` (batch, 3) [sell, hold, buy] and ``expected_return`` (batch,) in log units."""
        logits, ret_z = self(x)
        return {"probs": torch.softmax(logits, dim=-1), "expected_return": ret_z * self.return_scale}
