"""CNN+LSTM+attention forecaster: the design model of raytrade.

Pipeline over one window ``x (batch, lookback, n_features)`` of scaled features (the window ends at
bar t; nothing after t is ever in it):

1. parallel Conv1d branches, one per odd kernel size (bars), "same" padding, each a residual block
   ``Conv1d -> LayerNorm(channels) -> GELU -> Conv1d -> LayerNorm(channels) (+ 1x1-conv skip) -> GELU``
   -> concat: ``(batch, lookback, conv_channels * n_kernels)``. The normalisation is per sample and
   per bar (LayerNorm over channels), so it does not depend on batch statistics: DDP, tiny batches
   and train/eval behave the same;
2. a (bidirectional, multi-layer) LSTM: ``(batch, lookback, D)``, ``D = lstm_hidden * (2 if bidirectional else 1)``;
3. multi-head self-attention over the LSTM outputs with residual + LayerNorm: ``(batch, lookback, D)``;
4. pooling: the last time step concatenated with an attention-weighted pool (learned query) or the
   mean over time: ``(batch, 2 D)``;
5. Linear fusion + GELU -> the embedding ``(batch, embed_dim)``, read by the heads of
   :class:`~raytrade.models.base.ForecasterBase` and fed to the RL agents.

Convolutions ("same" padding), the bidirectional LSTM and the attention mix bars INSIDE the window
only; the zero padding at the window's right edge stands for "no data", never for a future bar. So a
window ending at t sees bars <= t only: no look-ahead beyond the window.

Sources: CNN-LSTM hybrids for price forecasting (e.g. Livieris, Pintelas & Pintelas, "A CNN-LSTM
model for gold price time-series forecasting", Neural Computing and Applications, 2020), multi-kernel
branches as in Inception-style temporal convolutions, residual blocks (He et al., 2016), multi-head
attention (Vaswani et al., "Attention Is All You Need", 2017), MC dropout for uncertainty (Gal &
Ghahramani, 2016; see :meth:`ForecasterBase.forecast`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from raytrade.config import ModelConfig
from raytrade.models.base import N_CLASSES, ForecasterBase, _as_int_list


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a ``(batch, channels, time)`` tensor, per sample and time step."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class ResidualConvBlock(nn.Module):
    """``GELU(norm(conv(GELU(norm(conv(x))))) + skip(x))``; ``skip`` is a 1x1 conv when channels differ.

    Input/output ``(batch, channels, time)``; "same" padding keeps ``time`` (odd ``kernel_size``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.body = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=pad),
            ChannelLayerNorm(out_channels),
            nn.GELU(),
            nn.Conv1d(out_channels, out_channels, kernel_size, padding=pad),
            ChannelLayerNorm(out_channels),
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv1d(in_channels, out_channels, 1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class CNNLSTMForecaster(ForecasterBase):
    """Multi-kernel residual Conv1d branches -> (Bi)LSTM -> self-attention -> pooling -> embedding -> heads.

    Args:
        n_features: feature columns per bar.
        conv_channels: output channels of EACH conv branch.
        kernel_sizes: one branch per odd positive kernel size, in bars (list or tuple).
        lstm_hidden: LSTM hidden size per direction; lstm_layers: stacked layers (inter-layer dropout = ``dropout``).
        bidirectional: bidirectional LSTM (within the window only).
        attention_heads: heads of the self-attention; must divide ``lstm_hidden * (2 if bidirectional else 1)``.
        embed_dim: size of the fused embedding.
        dropout: dropout on the conv features, the attention output and the embedding (MC-dropout rate).
        pool: ``"attention"`` (learned-query attention pool) or ``"mean"``, concatenated with the last step.
        n_classes: 3 (sell, hold, buy).
        return_scale: std of the training forward log returns; see :class:`ForecasterBase`.

    Input ``x``: float32 ``(batch, lookback, n_features)``. ``forward`` returns ``(logits (batch, 3),
    return_z (batch,))`` (+ the embedding ``(batch, embed_dim)`` with ``return_features=True``).

    Raises:
        ValueError: a kernel size that is not odd and positive; ``attention_heads`` not dividing the LSTM
            output size; an unknown ``pool``.
    """

    def __init__(
        self,
        n_features: int,
        conv_channels: int = 16,
        kernel_sizes: Sequence[int] = (3, 5, 7, 11),
        lstm_hidden: int = 32,
        lstm_layers: int = 2,
        bidirectional: bool = True,
        attention_heads: int = 4,
        embed_dim: int = 32,
        dropout: float = 0.1,
        pool: str = "attention",
        n_classes: int = N_CLASSES,
        return_scale: float = 1.0,
    ) -> None:
        kernels = _as_int_list(kernel_sizes, "kernel_sizes")
        if not kernels or any(k < 1 or k % 2 == 0 for k in kernels):
            raise ValueError(f"kernel_sizes must be odd positive integers (bars), got {kernels}")
        lstm_out = lstm_hidden * (2 if bidirectional else 1)
        if attention_heads < 1 or lstm_out % attention_heads != 0:
            raise ValueError(
                f"the LSTM output size lstm_hidden * (2 if bidirectional else 1) = {lstm_hidden} * "
                f"{2 if bidirectional else 1} = {lstm_out} is not divisible by attention_heads = {attention_heads}; "
                "change model.lstm_hidden, model.bidirectional or model.attention_heads"
            )
        if pool not in ("attention", "mean"):
            raise ValueError(f"pool must be 'attention' or 'mean', got {pool!r}")
        super().__init__(n_features, embed_dim, dropout, n_classes, return_scale)
        self.kernel_sizes = kernels
        self.pool = pool
        self.branches = nn.ModuleList(ResidualConvBlock(n_features, conv_channels, k) for k in kernels)
        self.conv_dropout = nn.Dropout(float(dropout))
        self.lstm = nn.LSTM(
            conv_channels * len(kernels), lstm_hidden, num_layers=lstm_layers, batch_first=True,
            bidirectional=bidirectional, dropout=float(dropout) if lstm_layers > 1 else 0.0,
        )
        self.attention = nn.MultiheadAttention(lstm_out, attention_heads, dropout=float(dropout), batch_first=True)
        self.attn_dropout = nn.Dropout(float(dropout))
        self.attn_norm = nn.LayerNorm(lstm_out)
        if pool == "attention":
            self.pool_query = nn.Parameter(torch.randn(lstm_out) / math.sqrt(lstm_out))
        self.fusion = nn.Sequential(nn.Linear(2 * lstm_out, self.embed_dim), nn.GELU())

    @classmethod
    def kwargs_from_config(cls, cfg: ModelConfig, n_features: int, return_scale: float) -> dict[str, Any]:
        return {
            **super().kwargs_from_config(cfg, n_features, return_scale),
            "conv_channels": int(cfg.conv_channels),
            "kernel_sizes": [int(k) for k in cfg.kernel_sizes],
            "lstm_hidden": int(cfg.lstm_hidden),
            "lstm_layers": int(cfg.lstm_layers),
            "bidirectional": bool(cfg.bidirectional),
            "attention_heads": int(cfg.attention_heads),
            "embed_dim": int(cfg.embed_dim),
        }

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_from_fixed(self.encode_fixed(x))

    def encode_fixed(self, x: torch.Tensor) -> torch.Tensor:
        """The conv branches (no dropout): ``(B, L, n_features)`` -> ``(B, L, C * n_kernels)``."""
        z = x.transpose(1, 2)  # (B, n_features, L)
        return torch.cat([branch(z) for branch in self.branches], dim=1).transpose(1, 2).contiguous()

    def encode_from_fixed(self, z: torch.Tensor) -> torch.Tensor:
        """Dropout -> LSTM -> attention -> pooling -> embedding ``(B, embed_dim)``."""
        z = self.conv_dropout(z)  # (B, L, C * n_kernels)
        h, _ = self.lstm(z)  # (B, L, D)
        a, _ = self.attention(h, h, h, need_weights=False)
        h = self.attn_norm(h + self.attn_dropout(a))  # (B, L, D)
        if self.pool == "attention":
            w = torch.softmax(h @ self.pool_query / math.sqrt(h.shape[-1]), dim=1)  # (B, L) weights over time
            pooled = (w.unsqueeze(-1) * h).sum(1)
        else:
            pooled = h.mean(1)
        return self.fusion(torch.cat([h[:, -1], pooled], dim=-1))  # (B, embed_dim)
