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

import threading
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def shared_dropout_masks(model: nn.Module, samples: int, seed: int) -> Iterator[None]:
    """Within the block, every ``nn.Dropout`` of ``model`` (in eval mode, so otherwise the identity) applies
    MC-dropout masks shared across the windows of a sample-major batch.

    The input of a dropout module must hold ``samples`` blocks of ``b`` windows (``x.repeat(samples, ...)``);
    sample ``j`` of every window gets the same inverted-dropout mask (keep with probability ``1 - p``, scaled by
    ``1 / (1 - p)``), drawn from a generator seeded with ``seed`` when the block starts, in module call order.
    So the masks do not depend on ``b``: MC dropout (Gal & Ghahramani, 2016) gives a window the same samples
    whatever else is in the batch. Thread-safe: the masks apply only to passes of the calling thread.
    """
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(int(seed))
    owner = threading.get_ident()  # hooks are per module, not per thread: other threads' passes are left alone

    def mask(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        p = float(module.p)
        if p <= 0.0 or threading.get_ident() != owner:
            return output
        x = inputs[0]
        keep = torch.empty((samples, 1, *x.shape[1:]), dtype=x.dtype, device=x.device)
        keep.bernoulli_(1.0 - p, generator=gen)
        return (x.reshape(samples, -1, *x.shape[1:]) * keep / (1.0 - p)).reshape(x.shape)

    handles = [m.register_forward_hook(mask) for m in model.modules() if isinstance(m, nn.Dropout)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


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
    def forecast(self, x: torch.Tensor, mc_samples: int = 0, mc_means: bool = True,
                 mc_seed: int | None = None) -> dict[str, torch.Tensor]:
        """Inference (whatever the current train/eval mode; modes are restored afterwards).

        Always: ``probs`` (B, 3) [sell, hold, buy], ``expected_return`` (B,) log return over the label
        horizon, ``embedding`` (B, embed_dim) — from a deterministic pass (dropout off).

        With ``mc_samples > 0`` (MC dropout): ``probs`` / ``expected_return`` become the means over
        ``mc_samples`` passes in which only the ``nn.Dropout`` modules act (with seeded masks), and the result adds
        ``probs_std`` (B, 3), ``return_std`` (B,) in log units, ``predictive_entropy`` (B,) in nats
        (entropy of the mean probs) and ``mutual_information`` (B,) (predictive entropy minus the mean
        per-pass entropy: the epistemic part, in nats). With ``mc_means=False`` ``probs`` / ``expected_return``
        stay the deterministic pass's and only the spreads are added (one call for both, as the agents need).

        The MC passes draw their dropout masks from ``mc_seed`` (default: a seed drawn from torch's global RNG),
        the same masks for every window (see :meth:`_mc_passes`): a window's MC outputs depend on the window
        and the seed only, not on which other windows share the batch, so a forecast served alone equals the
        one the backtest computed in bulk.
        """
        self._check_input(x)
        modes = {m: m.training for m in self.modules()}
        try:
            self.eval()
            fixed = self.encode_fixed(x)  # once for the deterministic pass and every MC pass
            emb = self.encode_from_fixed(fixed)  # = encode(x): the subclass contract
            h = self.dropout(emb)  # the identity in eval mode, as in forward()
            logits, ret_z = self.class_head(h), self.return_head(h).squeeze(-1)
            out = {"probs": torch.softmax(logits, dim=-1), "expected_return": ret_z * self.return_scale,
                   "embedding": emb}
            if mc_samples > 0:
                seed = int(torch.randint(0, 2**62, (1,)).item()) if mc_seed is None else int(mc_seed)
                probs, rets = self._mc_passes(x, int(mc_samples), seed, fixed)  # (S, B, 3), (S, B)
                mean_p, mean_r = probs.mean(0), rets.mean(0)
                if mc_means:
                    out["probs"], out["expected_return"] = mean_p, mean_r
                out["probs_std"] = (probs - mean_p).square().mean(0).sqrt()  # population std over samples
                out["return_std"] = (rets - mean_r).square().mean(0).sqrt()
                entropy = torch.special.entr(mean_p).sum(-1)
                out["predictive_entropy"] = entropy
                out["mutual_information"] = (entropy - torch.special.entr(probs).sum(-1).mean(0)).clamp_min(0.0)
        finally:
            for m, training in modes.items():
                m.training = training
        return out

    def _mc_passes(self, x: torch.Tensor, samples: int, seed: int = 0,
                   fixed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``samples`` stochastic passes (the model in eval mode, the ``nn.Dropout`` modules masked by
        :func:`shared_dropout_masks`), batched by repeating up to :attr:`mc_max_rows` rows per pass.

        Every window sees the same ``samples`` masks per dropout module, drawn afresh from ``seed`` for each
        chunk of windows. :meth:`encode_fixed` runs once; only :meth:`encode_from_fixed` and the heads run per
        pass (``fixed``: its output when the caller has it already). Returns ``probs (samples, B, 3)`` and
        ``rets (samples, B)``.
        """
        batch = x.shape[0]
        per_chunk = max(1, self.mc_max_rows // samples)  # windows per pass, each with all its samples
        fixed = self.encode_fixed(x) if fixed is None else fixed
        probs = [torch.empty(samples, 0, self.n_classes, device=x.device)]
        rets = [torch.empty(samples, 0, device=x.device)]
        for start in range(0, batch, per_chunk):
            part = fixed[start : start + per_chunk]
            with shared_dropout_masks(self, samples, seed):
                h = self.dropout(self.encode_from_fixed(part.repeat(samples, *([1] * (part.ndim - 1)))))
            logits, ret_z = self.class_head(h), self.return_head(h).squeeze(-1)
            probs.append(torch.softmax(logits, dim=-1).reshape(samples, len(part), self.n_classes))
            rets.append((ret_z * self.return_scale).reshape(samples, len(part)))
        return torch.cat(probs, dim=1), torch.cat(rets, dim=1)
