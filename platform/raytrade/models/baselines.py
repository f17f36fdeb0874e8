"""Baseline forecasters to compare the CNN+LSTM against, all on the :class:`ForecasterBase` heads.

* :class:`LSTMForecaster` / :class:`GRUForecaster`: a recurrent net only; the last step (+ the mean
  over the window) -> Linear + GELU -> embedding ``(batch, embed_dim)``.
* :class:`TransformerForecaster`: Linear input projection to ``transformer_dim``, sinusoidal (or learned)
  positional encoding, a pre-norm ``nn.TransformerEncoder`` (Vaswani et al., 2017); the last token ->
  Linear + GELU -> embedding ``(batch, embed_dim)``.
* :class:`LinearForecaster`: the non-deep baseline. The embedding is the LAST bar's feature row itself
  (``embed_dim = n_features``), so with the base's linear heads it is exactly multinomial logistic
  regression (class) and linear regression (return, in units of ``return_scale``) on the last bar's
  features; the base's dropout on that row gives its MC-dropout uncertainty.

Every network reads only the window ``(batch, lookback, n_features)`` that ends at bar t: nothing after t.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from raytrade.config import ModelConfig
from raytrade.models.base import N_CLASSES, ForecasterBase


class _RecurrentForecaster(ForecasterBase):
    """(Bi)LSTM/GRU over the window; ``[last step, mean over time]`` -> Linear + GELU -> embedding."""

    rnn_cls: type[nn.RNNBase] = nn.LSTM

    def __init__(
        self,
        n_features: int,
        lstm_hidden: int = 32,
        lstm_layers: int = 2,
        bidirectional: bool = True,
        embed_dim: int = 32,
        dropout: float = 0.1,
        mean_pool: bool = True,
        n_classes: int = N_CLASSES,
        return_scale: float = 1.0,
    ) -> None:
        super().__init__(n_features, embed_dim, dropout, n_classes, return_scale)
        self.mean_pool = bool(mean_pool)
        self.rnn = self.rnn_cls(
            n_features, lstm_hidden, num_layers=lstm_layers, batch_first=True, bidirectional=bidirectional,
            dropout=float(dropout) if lstm_layers > 1 else 0.0,
        )
        out = lstm_hidden * (2 if bidirectional else 1)
        self.rnn_dropout = nn.Dropout(float(dropout))
        self.fusion = nn.Sequential(nn.Linear(out * (2 if self.mean_pool else 1), self.embed_dim), nn.GELU())

    @classmethod
    def kwargs_from_config(cls, cfg: ModelConfig, n_features: int, return_scale: float) -> dict[str, Any]:
        return {
            **super().kwargs_from_config(cfg, n_features, return_scale),
            "lstm_hidden": int(cfg.lstm_hidden),
            "lstm_layers": int(cfg.lstm_layers),
            "bidirectional": bool(cfg.bidirectional),
            "embed_dim": int(cfg.embed_dim),
        }

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_from_fixed(self.encode_fixed(x))

    def encode_fixed(self, x: torch.Tensor) -> torch.Tensor:
        """The recurrent layers ``(B, L, hidden * directions)`` (their inter-layer dropout is off in MC passes:
        it is not an ``nn.Dropout`` module)."""
        return self.rnn(x)[0].contiguous()  # (contiguous: dropout masks then map to the same elements)

    def encode_from_fixed(self, h: torch.Tensor) -> torch.Tensor:
        h = self.rnn_dropout(h)
        pooled = torch.cat([h[:, -1], h.mean(1)], dim=-1) if self.mean_pool else h[:, -1]
        return self.fusion(pooled)  # (B, embed_dim)


class LSTMForecaster(_RecurrentForecaster):
    """LSTM-only baseline (see :class:`_RecurrentForecaster` for the args; ``lstm_*`` config fields)."""

    rnn_cls = nn.LSTM


class GRUForecaster(_RecurrentForecaster):
    """GRU-only baseline; uses the ``lstm_hidden``/``lstm_layers``/``bidirectional`` config fields."""

    rnn_cls = nn.GRU


def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Vaswani et al. (2017) sinusoidal positional encoding ``(length, dim)``; position 0 = oldest bar."""
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe.to(dtype)


class TransformerForecaster(ForecasterBase):
    """Transformer-encoder baseline.

    Args:
        n_features: feature columns per bar.
        transformer_dim: ``d_model``; must be divisible by ``attention_heads``.
        transformer_layers: encoder layers (pre-norm, GELU, feed-forward ``4 * transformer_dim``).
        attention_heads: heads per layer.
        embed_dim: size of the embedding (last token -> Linear + GELU).
        dropout: dropout inside the encoder layers and on the embedding (MC-dropout rate).
        positional: ``"sinusoidal"`` (any lookback) or ``"learned"`` (lookback <= ``max_len``).
        max_len: longest window for learned positions.
        n_classes, return_scale: see :class:`ForecasterBase`.

    Input ``(batch, lookback, n_features)``; the encoder attends over the whole window (which ends at t),
    the last token is pooled.
    """

    def __init__(
        self,
        n_features: int,
        transformer_dim: int = 32,
        transformer_layers: int = 2,
        attention_heads: int = 4,
        embed_dim: int = 32,
        dropout: float = 0.1,
        positional: str = "sinusoidal",
        max_len: int = 512,
        n_classes: int = N_CLASSES,
        return_scale: float = 1.0,
    ) -> None:
        if attention_heads < 1 or transformer_dim % attention_heads != 0:
            raise ValueError(
                f"transformer_dim = {transformer_dim} is not divisible by attention_heads = {attention_heads}; "
                "change model.transformer_dim or model.attention_heads"
            )
        if positional not in ("sinusoidal", "learned"):
            raise ValueError(f"positional must be 'sinusoidal' or 'learned', got {positional!r}")
        super().__init__(n_features, embed_dim, dropout, n_classes, return_scale)
        self.transformer_dim = int(transformer_dim)
        self.positional = positional
        self.max_len = int(max_len)
        self.input_proj = nn.Linear(n_features, self.transformer_dim)
        if positional == "learned":
            self.pos_embedding = nn.Parameter(torch.randn(self.max_len, self.transformer_dim) * 0.02)
        self.input_dropout = nn.Dropout(float(dropout))
        layer = nn.TransformerEncoderLayer(
            self.transformer_dim, attention_heads, dim_feedforward=4 * self.transformer_dim, dropout=float(dropout),
            activation="gelu", batch_first=True, norm_first=True,
        )
        # norm_first disables PyTorch's fused inference fast path, which would ignore the Dropout
        # modules that MC dropout switches on.
        self.encoder = nn.TransformerEncoder(layer, transformer_layers, norm=nn.LayerNorm(self.transformer_dim),
                                             enable_nested_tensor=False)
        self.fusion = nn.Sequential(nn.Linear(self.transformer_dim, self.embed_dim), nn.GELU())

    @classmethod
    def kwargs_from_config(cls, cfg: ModelConfig, n_features: int, return_scale: float) -> dict[str, Any]:
        return {
            **super().kwargs_from_config(cfg, n_features, return_scale),
            "transformer_dim": int(cfg.transformer_dim),
            "transformer_layers": int(cfg.transformer_layers),
            "attention_heads": int(cfg.attention_heads),
            "embed_dim": int(cfg.embed_dim),
        }

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_from_fixed(self.encode_fixed(x))

    def encode_fixed(self, x: torch.Tensor) -> torch.Tensor:
        """Input projection + positions ``(B, L, transformer_dim)``."""
        length = x.shape[1]
        z = self.input_proj(x)  # (B, L, d)
        if self.positional == "learned":
            if length > self.max_len:
                raise ValueError(f"lookback {length} exceeds max_len {self.max_len} of the learned positions")
            return z + self.pos_embedding[:length]
        return z + sinusoidal_positions(length, self.transformer_dim, z.device, z.dtype)

    def encode_from_fixed(self, z: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.input_dropout(z))  # (B, L, d)
        return self.fusion(h[:, -1])  # (B, embed_dim)


class LinearForecaster(ForecasterBase):
    """Multinomial logistic regression (+ linear return regression) on the LAST bar's features.

    The embedding is ``x[:, -1, :]`` itself (``embed_dim = n_features``); earlier bars of the window are
    ignored. ``dropout`` on that row (off in eval) gives MC-dropout uncertainty.
    """

    def __init__(self, n_features: int, dropout: float = 0.1, n_classes: int = N_CLASSES,
                 return_scale: float = 1.0) -> None:
        super().__init__(n_features, n_features, dropout, n_classes, return_scale)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, -1, :]  # (B, n_features)
