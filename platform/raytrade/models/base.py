"""Shared base of every forecaster network: the two heads, the input check and (MC-dropout) inference.

A subclass only builds its encoder: it implements :meth:`ForecasterBase.encode`, mapping a window
``x (batch, lookback, n_features)`` to the fused embedding ``(batch, embed_dim)``, and passes
``embed_dim`` to ``ForecasterBase.__init__``. An encoder whose first layers hold no ``nn.Dropout`` may
split itself into :meth:`~ForecasterBase.encode_fixed` (those layers) and
:meth:`~ForecasterBase.encode_from_fixed` (the rest), so MC dropout runs the fixed part once per window
rather than once per pass. The base then owns

* ``dropout`` on the embedding, ``class_head`` (sell/hold/buy logits) and ``return_head``
  (forward log return divided by ``return_scale``);
* the buffer ``return_scale``: std of the TRAINING forward log returns; the return head is trained
  on ``return / return_scale`` and :meth:`forecast` multiplies it back (log units);
* :meth:`forecast`: deterministic inference or Monte Carlo dropout (Gal & Ghahramani, "Dropout as a
  Bayesian Approximation: Representing Model Uncertainty in Deep Learning", ICML 2016): keep only the
  ``nn.Dropout`` modules stochastic, average ``mc_samples`` passes and report the spread, the predictive
  entropy and its epistemic part (mutual information between the prediction and the weights).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from raytrade.config import ModelConfig

N_CLASSES = 3  # sell, hold, buy


def _as_int_list(values: Any, name: str) -> list[int]:
    """A sequence arg given as list or tuple (kwargs come back from JSON as lists) -> list of ints."""
    if isinstance(values, int | str) or values is None:
        raise ValueError(f"{name} must be a sequence of ints, got {values!r}")
    return [int(v) for v in values]


class ForecasterBase(nn.Module):
    """Base class of the forecasters: heads, input validation, :meth:`forward` and :meth:`forecast`.

    Args:
        n_features: feature columns per bar (last input dim).
        embed_dim: size of the embedding :meth:`encode` returns (and the heads read).
        dropout: rate of the dropout on the embedding before the heads (and the MC-dropout rate).
        n_classes: classes of the classification head (3: sell, hold, buy).
        return_scale: std of the training forward log returns (> 0); ``expected_return = return_z * return_scale``.

    Shapes: input ``x`` float ``(batch, lookback, n_features)``; ``forward`` gives ``logits (batch, 3)``
    and ``return_z (batch,)`` (return in units of ``return_scale``).
    """

    #: MC-dropout rows (batch x samples) run in ONE forward pass; larger requests are chunked.
    mc_max_rows: int = 65536

    def __init__(self, n_features: int, embed_dim: int, dropout: float = 0.1, n_classes: int = N_CLASSES,
                 return_scale: float = 1.0) -> None:
        super().__init__()
        if n_features < 1 or embed_dim < 1:
            raise ValueError(f"n_features and embed_dim must be positive, got {n_features} and {embed_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.n_features = int(n_features)
        self.embed_dim = int(embed_dim)
        self.n_classes = int(n_classes)
        self.dropout = nn.Dropout(float(dropout))
        self.class_head = nn.Linear(self.embed_dim, self.n_classes)
        self.return_head = nn.Linear(self.embed_dim, 1)
        self.register_buffer("return_scale", torch.tensor(float(return_scale) or 1.0))

    # ---- to implement ------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Window ``(batch, lookback, n_features)`` -> fused embedding ``(batch, embed_dim)``."""
        raise NotImplementedError

    def encode_fixed(self, x: torch.Tensor) -> torch.Tensor:
        """The leading part of :meth:`encode` with no ``nn.Dropout`` in it (identical in every MC pass).

        Default: nothing (``x`` itself). A subclass overriding it also overrides :meth:`encode_from_fixed`
        so that ``encode(x) == encode_from_fixed(encode_fixed(x))``; the first dim stays ``batch``.
        """
        return x

    def encode_from_fixed(self, z: torch.Tensor) -> torch.Tensor:
        """The rest of :meth:`encode`: ``encode_fixed(x)`` -> embedding ``(batch, embed_dim)``."""
        return self.encode(z)

    @classmethod
    def kwargs_from_config(cls, cfg: ModelConfig, n_features: int, return_scale: float) -> dict[str, Any]:
        """JSON-serialisable constructor kwargs of this class from the config fields it uses."""
        return {"n_features": int(n_features), "dropout": float(cfg.dropout), "return_scale": float(return_scale)}

    # ---- shared ------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 3 or x.shape[-1] != self.n_features:
            raise ValueError(
                f"expected x of shape (batch, lookback, n_features) with n_features={self.n_features}, "
                f"got {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor, return_features: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits (B, 3), return_z (B,))``, plus the embedding ``(B, embed_dim)`` when ``return_features``."""
        self._check_input(x)
        emb = self.encode(x)
        h = self.dropout(emb)
        logits, ret_z = self.class_head(h), self.return_head(h).squeeze(-1)
        return (logits, ret_z, emb) if return_features else (logits, ret_z)

    @torch.no_grad()
    def forecast(self, x: torch.Tensor, mc_samples: int = 0) -> dict[str, torch.Tensor]:
        """Inference (whatever the current train/eval mode; modes are restored afterwards).

        Always: ``probs`` (B, 3) [sell, hold, buy], ``expected_return`` (B,) log return over the label
        horizon, ``embedding`` (B, embed_dim) — from a deterministic pass (dropout off).

        With ``mc_samples > 0`` (MC dropout): ``probs`` / ``expected_return`` become the means over
        ``mc_samples`` passes with only the ``nn.Dropout`` modules active, and the result adds
        ``probs_std`` (B, 3), ``return_std`` (B,) in log units, ``predictive_entropy`` (B,) in nats
        (entropy of the mean probs) and ``mutual_information`` (B,) (predictive entropy minus the mean
        per-pass entropy: the epistemic part, in nats).
        """
        self._check_input(x)
        modes = {m: m.training for m in self.modules()}
        try:
            self.eval()
            logits, ret_z, emb = self(x, return_features=True)
            out = {"probs": torch.softmax(logits, dim=-1), "expected_return": ret_z * self.return_scale,
                   "embedding": emb}
            if mc_samples > 0:
                for m in self.modules():
                    if isinstance(m, nn.Dropout):
                        m.train()
                probs, rets = self._mc_passes(x, int(mc_samples))  # (S, B, 3), (S, B)
                mean_p = probs.mean(0)
                out["probs"] = mean_p
                out["expected_return"] = rets.mean(0)
                mean_r = out["expected_return"]
                out["probs_std"] = (probs - mean_p).square().mean(0).sqrt()  # population std over samples
                out["return_std"] = (rets - mean_r).square().mean(0).sqrt()
                entropy = torch.special.entr(mean_p).sum(-1)
                out["predictive_entropy"] = entropy
                out["mutual_information"] = (entropy - torch.special.entr(probs).sum(-1).mean(0)).clamp_min(0.0)
        finally:
            for m, training in modes.items():
                m.training = training
        return out

    def _mc_passes(self, x: torch.Tensor, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``samples`` stochastic passes, batched by repeating ``x`` up to :attr:`mc_max_rows` rows per pass.

        :meth:`encode_fixed` runs once; only :meth:`encode_from_fixed` and the heads run per pass.
        """
        batch = x.shape[0]
        per_chunk = max(1, self.mc_max_rows // max(batch, 1))
        fixed = self.encode_fixed(x)
        probs, rets = [], []
        done = 0
        while done < samples:
            s = min(per_chunk, samples - done)
            h = self.dropout(self.encode_from_fixed(fixed.repeat(s, *([1] * (fixed.ndim - 1)))))
            logits, ret_z = self.class_head(h), self.return_head(h).squeeze(-1)
            probs.append(torch.softmax(logits, dim=-1).reshape(s, batch, self.n_classes))
            rets.append((ret_z * self.return_scale).reshape(s, batch))
            done += s
        return torch.cat(probs), torch.cat(rets)
