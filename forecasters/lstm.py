"""A recurrent (LSTM or GRU) quantile forecaster, per target or global.

What the network sees, for a forecast made after history index ``o``
(the last observation, the "origin"):

- a lookback window of ``lookback`` steps ending at ``o``, one row per step:
  the value scaled by the series' robust scaler (``(y - median) / IQR``), the
  value relative to the origin (``(y - y[o]) / IQR``), a missing-sample flag,
  time of day and day of week as sin/cos pairs, and, per configured
  covariate, its own scaled value and missing flag;
- for every horizon step ``h``: the calendar encoding of the target time and
  the value one day before the target time relative to the origin (with a
  missing flag), when that lies in the history (``seasonal_lag``);
- the origin's scaled level and the value one day before the origin.

It predicts the whole horizon at once (direct multi-horizon), as offsets from
the origin's value in scaled units, for every trained quantile level. The
median is a free output; the levels above it add cumulative softplus
increments and the levels below subtract them, so the quantiles never cross.
Training minimises the pinball (quantile) loss, masked where a target is
missing.

Gaps are imputed by carrying the last observation forward *and* flagged in the
missing-sample channel, so the model knows which inputs are real; missing
targets are masked out of the loss. Nothing after the origin is ever read: the
validation split is time-ordered (training windows end ``horizon`` steps
before the first validation origin), the scaler is fitted on the data given to
``fit`` only, and ``predict`` reads only ``self._history``.

After training, on the validation windows (the last ``val_fraction`` of the
training period, time-ordered):

1. the *median gate* (:func:`_fit_gate`) picks, per horizon step, the median
   ``last value + a * clip(network correction) + b * seasonal change`` with
   the lowest mean absolute error, persistence ``(0, 0)`` included, so the
   median is never worse than the last value there; the network's correction
   fades out at levels outside the training range (:func:`_fade`);
2. a conformal correction (Romano et al., "Conformalized Quantile
   Regression", NeurIPS 2019) shifts each other level at each horizon step by
   the empirical quantile of its residuals, so the 0.9 level covers about
   90 % of unseen outcomes rather than the (over-confident) training share;
   no level lies further from the median than the median's largest error
   there.

Global mode: :class:`GlobalLSTM` trains one network across many series (each
with its own scaler) and forecasts any number of them in one batched call
(:meth:`GlobalLSTM.predict_many`). A per-target :class:`LSTMForecaster` can
start from a global model (``init_from=``): the cold-start path for a new
target with little history.

torch is imported lazily, inside functions: importing ``forecasters`` (or this
module) does not import it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import io
import json
import math
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from statistics import NormalDist
from typing import Any, Callable, ClassVar, Literal, Mapping, Sequence

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from engine.core.errors import ForecastError, InsufficientHistory
from engine.core.gaps import hold_forward, sample_cadence
from engine.core.plugins import Capabilities
from engine.core.types import Forecast, Series
from engine.core.units import to_epoch

from .base import BaseForecaster, ForecasterParams, requested_levels

CHECKPOINT_FORMAT = "forescale.lstm/1"
_DAY = 86400
#: the absolute level (in IQRs from the training median) is clipped so a level
#: shift after training (common: deploys, migrations) cannot push the
#: network far outside what it was trained on
_LEVEL_CLIP = 3.0
_ARCH_FIELDS = ("lookback", "horizon", "hidden_size", "num_layers", "cell", "quantiles",
                "seasonal_lag", "covariates")


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without torch
        raise ForecastError(
            "the lstm forecaster needs PyTorch: pip install 'forescale[lstm]' (or torch)"
        ) from exc
    return torch


# ---------------------------------------------------------------------------- params
def _trained_levels(v: Sequence[float]) -> tuple[float, ...]:
    levels = tuple(sorted({float(q) for q in v}))
    for q in levels:
        if not 0.0 < q < 1.0:
            raise ValueError(f"quantile {q} is not in (0, 1)")
    if 0.5 not in levels:
        raise ValueError(f"quantiles must include 0.5 (the point forecast), got {list(levels)}")
    return levels


class LSTMParams(ForecasterParams):
    """Architecture and training settings. ``lookback`` and ``horizon`` are
    in steps of the series (5-minute data: 48 = 4 hours, 12 = 1 hour)."""

    lookback: int = Field(48, ge=4)
    horizon: int = Field(12, ge=1)
    hidden_size: int = Field(32, ge=1)
    num_layers: int = Field(1, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    cell: Literal["lstm", "gru"] = "lstm"
    #: trained quantile levels; must include 0.5 (the point forecast)
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    #: feed the value one day before each target time (a strong signal for
    #: daily-cyclic load, read from the history, never from the future)
    seasonal_lag: bool = True
    #: names of extra metrics passed to ``fit(..., covariates=...)``
    covariates: tuple[str, ...] = ()
    epochs: int = Field(30, ge=0)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    #: early stopping: epochs without a better validation loss
    patience: int = Field(4, ge=1)
    #: share of the (time-ordered) training windows kept for validation
    val_fraction: float = Field(0.3, gt=0.0, lt=0.9)
    min_train_windows: int = Field(64, ge=1)
    #: train on at most this many of the most recent steps (bounds time and
    #: memory; 8064 = 28 days of 5-minute data)
    max_train_steps: int = Field(8064, ge=16)
    #: conformal correction of each level on the validation windows
    calibrate: bool = True
    #: median = last value + a * network correction + b * seasonal change,
    #: (a, b) per horizon step chosen on the validation windows, (0, 0) =
    #: persistence when nothing beats it there
    median_gate: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    #: epochs of fine-tuning when starting from another model (``init_from``);
    #: 0 uses the source model as it is
    finetune_epochs: int = Field(3, ge=0)

    @property
    def max_steps(self) -> int | None:
        return self.horizon  # direct multi-horizon heads: no step past the last

    @field_validator("quantiles")
    @classmethod
    def _levels(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        return _trained_levels(v)

    @model_validator(mode="after")
    def _covariate_names(self) -> "LSTMParams":
        if len(set(self.covariates)) != len(self.covariates):
            raise ValueError(f"covariates: duplicate names in {list(self.covariates)}")
        return self


# ---------------------------------------------------------------------------- scaling
@dataclass(frozen=True)
class RobustScaler:
    """``(x - median) / scale`` with ``scale`` the interquartile range, or a
    fallback for flat data (MAD, then 10 % of the level, then 1)."""

    median: float
    scale: float

    @classmethod
    def fit(cls, values: np.ndarray) -> "RobustScaler":
        v = values[np.isfinite(values)]
        if v.size == 0:
            raise InsufficientHistory(0, 1, "lstm scaler")
        q25, med, q75 = np.percentile(v, [25, 50, 75])
        scale = float(q75 - q25)
        if not scale > 1e-12:
            scale = float(np.median(np.abs(v - med))) * 1.4826
        if not scale > 1e-12:
            scale = abs(float(med)) * 0.1
        if not scale > 1e-12:
            scale = 1.0
        return cls(float(med), scale)

    def to_dict(self) -> dict[str, float]:
        return {"median": self.median, "scale": self.scale}


# ---------------------------------------------------------------------------- features
def _calendar(ts: np.ndarray) -> np.ndarray:
    """(..., 4): sin/cos of time of day and of day of week (Monday = 0)."""
    ts = np.asarray(ts, dtype=np.int64)
    tod = (ts % _DAY) / _DAY * 2 * np.pi
    dow = (((ts // _DAY) + 3) % 7 + (ts % _DAY) / _DAY) / 7 * 2 * np.pi
    return np.stack([np.sin(tod), np.cos(tod), np.sin(dow), np.cos(dow)], axis=-1)


def _season_steps(step: int) -> int:
    return max(1, int(round(_DAY / step)))


def n_input_features(cfg: LSTMParams) -> int:
    return 7 + 2 * len(cfg.covariates)


def n_head_features(cfg: LSTMParams) -> int:
    return cfg.horizon * 6 + 3


def build_features(
    y: np.ndarray,
    ts: np.ndarray,
    origins: np.ndarray,
    scaler: RobustScaler,
    step: int,
    cfg: LSTMParams,
    covs: Sequence[tuple[np.ndarray, RobustScaler]] = (),
    *,
    with_targets: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Model inputs for the windows ending at each index in ``origins``.

    Returns ``(seq, head, targets, base)``: ``seq`` (B, lookback, F) float32,
    ``head`` (B, n_head) float32, ``targets`` (B, horizon) in scaled offsets
    from the origin (NaN where missing; only with ``with_targets``), and
    ``base`` (B,) the origin's value (last observation carried forward).
    Reads only indices ``<= origin`` for inputs.
    """
    L, H = cfg.lookback, cfg.horizon
    origins = np.asarray(origins, dtype=np.int64)
    yf = hold_forward(y)
    # the day-earlier values, held between the samples of a series sampled
    # coarser than the grid (else a lag lands between samples: no lag at all)
    yc = hold_forward(y, sample_cadence(y) - 1)
    miss = np.isnan(y).astype(np.float32)
    s, m = scaler.scale, scaler.median
    base = yf[origins]
    base = np.where(np.isnan(base), m, base)  # no valid value yet: the median

    win = origins[:, None] + np.arange(-L + 1, 1)[None, :]  # (B, L)
    valid = win >= 0
    wi = np.clip(win, 0, None)
    lvl = (yf[wi] - m) / s
    rel = (yf[wi] - base[:, None]) / s
    mis = np.where(valid, miss[wi], 1.0)
    lvl = np.where(valid & np.isfinite(lvl), lvl, 0.0)
    rel = np.where(valid & np.isfinite(rel), rel, 0.0)
    # calendar from the origin's timestamp back, on the regular grid
    wts = ts[origins][:, None] + step * np.arange(-L + 1, 1)[None, :]
    parts = [np.clip(lvl, -_LEVEL_CLIP, _LEVEL_CLIP)[..., None], rel[..., None], mis[..., None],
             _calendar(wts)]
    for cv, csc in covs:
        cf = hold_forward(cv)
        cl = (cf[wi] - csc.median) / csc.scale
        cm = np.where(valid, np.isnan(cv).astype(np.float32)[wi], 1.0)
        parts += [np.where(valid & np.isfinite(cl), cl, 0.0)[..., None], cm[..., None]]
    seq = np.concatenate(parts, axis=-1).astype(np.float32)

    hs = np.arange(1, H + 1)
    tts = ts[origins][:, None] + step * hs[None, :]  # (B, H)
    cal = _calendar(tts)  # (B, H, 4)
    S = _season_steps(step)
    if cfg.seasonal_lag:
        j = origins[:, None] + hs[None, :] - S  # one day before each target
        jok = (j >= 0) & (hs[None, :] <= S)
        yj = yc[np.clip(j, 0, y.size - 1)]  # (a lead past a day reads no lag: jok)
        lag = (yj - base[:, None]) / s
        lag_ok = jok & np.isfinite(lag)
        j0 = origins - S
        y0 = yc[np.clip(j0, 0, None)]
        d0 = (y0 - base) / s
        d0_ok = (j0 >= 0) & np.isfinite(d0)
    else:
        lag_ok = np.zeros((origins.size, H), dtype=bool)
        lag = np.zeros((origins.size, H))
        d0_ok = np.zeros(origins.size, dtype=bool)
        d0 = np.zeros(origins.size)
    hz = np.concatenate(
        [cal, np.where(lag_ok, lag, 0.0)[..., None], (~lag_ok).astype(np.float64)[..., None]],
        axis=-1,
    ).reshape(origins.size, H * 6)
    head = np.concatenate(
        [hz, np.clip((base - m) / s, -_LEVEL_CLIP, _LEVEL_CLIP)[:, None], np.where(d0_ok, d0, 0.0)[:, None],
         (~d0_ok)[:, None]],
        axis=-1,
    ).astype(np.float32)

    targets = None
    if with_targets:
        t = origins[:, None] + hs[None, :]
        tok = t < y.size
        yt = y[np.clip(t, 0, y.size - 1)]
        targets = np.where(tok, (yt - base[:, None]) / s, np.nan).astype(np.float32)
    return seq, head, targets, base


def training_origins(y: np.ndarray, cfg: LSTMParams, *, need_targets: bool = True) -> np.ndarray:
    """Origins with a full lookback, at least half of it observed at the
    series' own cadence (:func:`sample_cadence`: half of the samples a
    30-minute series has in it on a 5-minute grid), and (when
    ``need_targets``) at least one observed target within the horizon."""
    L, H = cfg.lookback, cfg.horizon
    n = y.size
    last = n - 1 - (1 if need_targets else 0)
    if last < L - 1:
        return np.zeros(0, dtype=np.int64)
    ok = (~np.isnan(y)).astype(np.int64)
    c = np.concatenate([[0], np.cumsum(ok)])
    o = np.arange(L - 1, last + 1)
    enough = (c[o + 1] - c[o + 1 - L]) * 2 * sample_cadence(y) >= L
    if need_targets:
        hi = np.minimum(o + H, n - 1)
        enough &= (c[hi + 1] - c[o + 1]) > 0
    return o[enough]


# ---------------------------------------------------------------------------- network
def _build_net(cfg: LSTMParams):
    torch = _torch()
    nn = torch.nn

    class QuantileRNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            rnn = nn.LSTM if cfg.cell == "lstm" else nn.GRU
            self.rnn = rnn(n_input_features(cfg), cfg.hidden_size, num_layers=cfg.num_layers,
                           dropout=cfg.dropout if cfg.num_layers > 1 else 0.0, batch_first=True)
            width = 2 * cfg.hidden_size + cfg.horizon
            self.head = nn.Sequential(
                nn.Linear(cfg.hidden_size + n_head_features(cfg), width),
                nn.ReLU(),
                nn.Dropout(cfg.dropout),
                nn.Linear(width, cfg.horizon * len(cfg.quantiles)),
            )
            # zero-initialised output: an untrained network forecasts
            # persistence (offset 0 from the origin) and learns corrections
            # from there, so few epochs never do worse than a wild guess
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)
            self.m = cfg.quantiles.index(0.5)
            self.h = cfg.horizon
            self.q = len(cfg.quantiles)

        def forward(self, seq, head):
            out, _ = self.rnn(seq)
            z = torch.cat([out[:, -1, :], head], dim=-1)
            return _monotone(self.head(z).float().view(-1, self.h, self.q), self.m)

    return QuantileRNN()


def _monotone(raw, m: int):
    """(B, H, Q) raw outputs -> quantiles that never cross: the median
    (level index ``m``) is free, the levels above add cumulative softplus
    increments and the levels below subtract them."""
    torch = _torch()
    softplus = torch.nn.functional.softplus
    q = raw.shape[-1]
    mid = raw[..., m: m + 1]
    parts = [mid]
    if m + 1 < q:  # levels above the median
        parts.append(mid + torch.cumsum(softplus(raw[..., m + 1:]), -1))
    if m > 0:  # levels below, built outwards from the median
        parts.insert(0, (mid - torch.cumsum(softplus(raw[..., :m].flip(-1)), -1)).flip(-1))
    return torch.cat(parts, dim=-1)  # (B, H, Q), non-decreasing in Q


def _resolve_device(name: str):
    torch = _torch()
    if name == "cuda" and not torch.cuda.is_available():
        raise ForecastError("lstm: device 'cuda' requested but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _amp_dtype(device):
    """Mixed precision on CUDA only (bf16 where supported, else fp16)."""
    torch = _torch()
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _pinball(pred, target, levels, weights=None):
    """Mean pinball loss over the finite targets; ``weights`` (H,) scales
    each horizon step's terms."""
    torch = _torch()
    t = target.unsqueeze(-1)
    mask = torch.isfinite(t)
    diff = torch.where(mask, t, pred) - pred
    loss = torch.maximum(levels * diff, (levels - 1) * diff)
    if weights is not None:
        loss = loss * weights.view(1, -1, 1)
    n = mask.sum().clamp(min=1) * 1.0
    return (loss * mask).sum() / (n)


class _Deterministic:
    """Seeded, deterministic torch for the duration of a fit; restores the
    process-wide switch afterwards (other code in the process may rely on it)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self):
        torch = _torch()
        self._prev = torch.are_deterministic_algorithms_enabled()
        self._prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
        torch.manual_seed(self.seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        return self

    def __exit__(self, *exc):
        _torch().use_deterministic_algorithms(self._prev, warn_only=self._prev_warn)


@dataclass
class _Data:
    seq: np.ndarray
    head: np.ndarray
    target: np.ndarray


#: called after each training epoch with (epoch, epochs); early stopping may
#: end before ``epochs``
EpochCallback = Callable[[int, int], None]


def _train(net, cfg: LSTMParams, train: _Data, val: _Data, device, epochs: int,
           on_epoch: EpochCallback | None = None, weights: np.ndarray | None = None) -> dict[str, Any]:
    """Adam on the pinball loss with early stopping on ``val``; keeps the
    best weights. ``weights`` (H,): each horizon step's weight in the loss
    (training and validation alike). Returns training metrics."""
    torch = _torch()
    net.to(device)
    amp = _amp_dtype(device)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    levels = torch.tensor(cfg.quantiles, dtype=torch.float32, device=device)
    w = None if weights is None else torch.tensor(weights, dtype=torch.float32, device=device)
    tr = [torch.from_numpy(a).to(device) for a in (train.seq, train.head, train.target)]
    va = [torch.from_numpy(a).to(device) for a in (val.seq, val.head, val.target)]
    rng = np.random.default_rng(cfg.seed)
    n = tr[0].shape[0]
    best = math.inf
    best_state = copy.deepcopy(net.state_dict())
    best_epoch, bad, ran = 0, 0, 0
    train_loss = math.nan
    for epoch in range(1, epochs + 1):
        ran = epoch
        net.train()
        perm = torch.from_numpy(rng.permutation(n)).to(device)
        total, count = 0.0, 0
        for i in range(0, n, cfg.batch_size):
            idx = perm[i: i + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                pred = net(tr[0][idx], tr[1][idx])
            loss = _pinball(pred.float(), tr[2][idx], levels, w)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                opt.step()
            total += float(loss.detach()) * idx.numel()
            count += idx.numel()
        train_loss = total / max(count, 1)
        vl = _evaluate(net, va, levels, device, amp, cfg.batch_size * 8, w)
        if on_epoch is not None:
            on_epoch(epoch, epochs)
        if vl < best - 1e-6:
            best, best_epoch, bad = vl, epoch, 0
            best_state = copy.deepcopy(net.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if epochs == 0:
        best = _evaluate(net, va, levels, device, amp, cfg.batch_size * 8, w)
    net.load_state_dict(best_state)
    net.eval()
    return {"val_loss": float(best), "train_loss": float(train_loss), "best_epoch": best_epoch,
            "epochs_run": ran, "train_windows": int(n), "val_windows": int(va[0].shape[0])}


def _evaluate(net, data, levels, device, amp, batch: int, weights=None) -> float:
    torch = _torch()
    if data[0].shape[0] == 0:
        return math.nan
    net.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, data[0].shape[0], batch):
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                pred = net(data[0][i: i + batch], data[1][i: i + batch])
            m = torch.isfinite(data[2][i: i + batch]).sum().item() * len(levels)
            total += float(_pinball(pred.float(), data[2][i: i + batch], levels, weights)) * m
            count += m
    return total / max(count, 1)


def _infer(net, seq: np.ndarray, head: np.ndarray, device, batch: int = 4096) -> np.ndarray:
    """(B, H, Q) scaled offsets."""
    torch = _torch()
    amp = _amp_dtype(device)
    net.eval()
    outs = []
    with torch.inference_mode():
        for i in range(0, seq.shape[0], batch):
            s = torch.from_numpy(seq[i: i + batch]).to(device)
            h = torch.from_numpy(head[i: i + batch]).to(device)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                out = net(s, h)
            outs.append(out.float().cpu().numpy())
    return np.concatenate(outs, axis=0) if outs else np.zeros((0, 0, 0), dtype=np.float32)


def _conformal(pred: np.ndarray, target: np.ndarray, levels: Sequence[float], *,
               median: bool = True) -> np.ndarray:
    """(H, Q) offsets: the level-q empirical quantile (finite-sample
    corrected, CQR) of ``target - pred`` per horizon step; 0 without data.
    ``median=False`` leaves the 0.5 level alone (the median gate already
    chose it on the same windows)."""
    H, Q = pred.shape[1], pred.shape[2]
    off = np.zeros((H, Q))
    for h in range(H):
        ok = np.isfinite(target[:, h])
        n = int(ok.sum())
        if n < 20:
            continue
        res = target[ok, h][:, None] - pred[ok, h, :]
        for k, q in enumerate(levels):
            if q == 0.5 and not median:
                continue
            level = min(1.0, q * (n + 1) / n) if q > 0.5 else max(0.0, (q * (n + 1) - 1) / n)
            off[h, k] = float(np.quantile(res[:, k], level))
    return off


def _apply_offsets(out: np.ndarray, offsets: np.ndarray | None) -> np.ndarray:
    """``offsets``: (H, Q) for every row, or (B, H, Q) one per row."""
    if offsets is not None:
        out = out + (offsets[None, :, :] if offsets.ndim == 2 else offsets)
    return np.maximum.accumulate(out, axis=-1)  # conformal shifts may cross: re-sort


#: grid of the median gate's weights (on the network's correction and on the
#: seasonal change); (0, 0) is persistence
_GATE_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def _seasonal_change(head: np.ndarray, horizon: int) -> np.ndarray:
    """(B, H) the change seen one day earlier over the same lead, in scaled
    units: ``(y[t - day] - y[o - day]) / scale`` (0 where either is missing),
    read back from the head features that :func:`build_features` wrote."""
    hz = head[:, : horizon * 6].reshape(-1, horizon, 6)
    lag, lag_missing = hz[..., 4], hz[..., 5]
    d0, d0_missing = head[:, horizon * 6 + 1], head[:, horizon * 6 + 2]
    ok = (lag_missing < 0.5) & (d0_missing < 0.5)[:, None]
    return np.where(ok, lag - d0[:, None], 0.0)


def _level_range(level: np.ndarray) -> tuple[float, float]:
    """The range (1st to 99th percentile) of the origins' scaled levels in
    the training windows: where the network has seen enough to correct."""
    v = level[np.isfinite(level)]
    if v.size == 0:
        return (0.0, 0.0)
    lo, hi = np.percentile(v, [1, 99])
    return (float(lo), float(hi))


def _fade(level: np.ndarray, rng: Sequence[float] | None) -> np.ndarray | None:
    """1 inside the training range of levels, falling linearly to 0 one
    scale unit (IQR) outside it: a series that moved to a level the network
    never saw (a saturated CPU, a migration) is forecast by persistence plus
    the seasonal change, not by a correction learnt elsewhere."""
    if rng is None:
        return None
    excess = np.maximum(np.maximum(rng[0] - level, level - rng[1]), 0.0)
    return np.clip(1.0 - excess, 0.0, 1.0)


def _fit_gate(pred: np.ndarray, head: np.ndarray, target: np.ndarray, levels: Sequence[float],
              fade: np.ndarray | None = None) -> np.ndarray:
    """(H, 4) ``(a, b, c, w)`` per horizon step of the gated median
    ``a * clip(network, ±c) + b * seasonal change`` (offsets from the last
    value): ``c`` is the 90th percentile of the absolute change over that
    lead on the validation windows (the network may not move the median
    further than a change that is common there), ``(a, b)`` are chosen on the
    validation windows by mean absolute error over a small grid. Persistence
    ``(0, 0)`` is a candidate and wins ties and steps with too few targets,
    so on the validation split the gated median is never worse than the last
    value. ``w`` is the largest absolute error of the gated median there: no
    quantile lies further than that from the median (a flat series gets a
    flat band; inf where there were too few targets)."""
    H = pred.shape[1]
    mid = pred[..., list(levels).index(0.5)]
    if fade is not None:
        mid = mid * fade[:, None]
    seas = _seasonal_change(head, H)
    gate = np.zeros((H, 4))
    gate[:, 3] = np.inf
    for h in range(H):
        ok = np.isfinite(target[:, h])
        if int(ok.sum()) < 20:
            continue
        t, sc = target[ok, h], seas[ok, h]
        c = float(np.percentile(np.abs(t), 90))
        m = np.clip(mid[ok, h], -c, c)
        gate[h, 2] = c
        best = float(np.mean(np.abs(t)))  # persistence
        for a in _GATE_GRID:
            for b in _GATE_GRID:
                err = float(np.mean(np.abs(t - a * m - b * sc)))
                if err < best - 1e-9:
                    best, gate[h, :2] = err, (a, b)
        gate[h, 3] = float(np.max(np.abs(t - gate[h, 0] * m - gate[h, 1] * sc)))
    return gate


def _apply_gate(out: np.ndarray, head: np.ndarray, gate: np.ndarray | None, levels: Sequence[float],
                fade: np.ndarray | None = None) -> np.ndarray:
    """Move every level by the gated median's change from the network's
    median (the spread of the quantiles is the network's)."""
    if gate is None:
        return out
    g = np.asarray(gate)
    if g.ndim == 2:
        g = np.broadcast_to(g, (out.shape[0],) + g.shape)
    mid = out[..., list(levels).index(0.5)]
    m = mid if fade is None else mid * fade[:, None]
    new = g[..., 0] * np.clip(m, -g[..., 2], g[..., 2]) + g[..., 1] * _seasonal_change(head, out.shape[1])
    return out + (new - mid)[..., None]


def _clamp_spread(out: np.ndarray, gate: np.ndarray | None, levels: Sequence[float]) -> np.ndarray:
    """Every level within the gate's ``w`` of the median (see ``_fit_gate``)."""
    if gate is None:
        return out
    g = np.asarray(gate)
    w = (g[None, :, 3] if g.ndim == 2 else g[..., 3])[..., None]
    mid = out[..., list(levels).index(0.5)][..., None]
    return mid + np.clip(out - mid, -w, w)


def _calibration(net, va: "_Data", cfg: LSTMParams, device,
                 fade: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The median gate, then the conformal offsets of the gated levels, both
    on the validation windows."""
    pred = _infer(net, va.seq, va.head, device)
    gate = _fit_gate(pred, va.head, va.target, cfg.quantiles, fade) if cfg.median_gate else None
    pred = _apply_gate(pred, va.head, gate, cfg.quantiles, fade)
    offsets = _conformal(pred, va.target, cfg.quantiles, median=gate is None) if cfg.calibrate else None
    return offsets, gate


def _pooled_gate(model: Any) -> list | None:
    """The gate a model started from it uses: a global model's pooled one."""
    return None if model._gate is None else np.asarray(model._gate).tolist()


def _levels_at(out_hq: np.ndarray, trained: Sequence[float], wanted: Sequence[float]) -> dict[float, np.ndarray]:
    """Requested levels from the trained ones by linear interpolation across
    levels. Outside the trained range, the distance of the outermost level
    from the median is scaled by the ratio of standard normal quantiles
    ``z(q) / z(outermost)`` (as the Prophet forecaster scales its interval):
    asked for 0.99 with 0.9 trained, the answer is not the 0.9 level again,
    which a planner would take for a 1 % tail. Without the median inside the
    trained range the outermost level is used."""
    tr = np.asarray(trained)

    def inside(q: float) -> np.ndarray:
        k = min(int(np.searchsorted(tr, q, side="right")) - 1, tr.size - 1)
        if tr[k] == q:
            return out_hq[..., k]
        w = (q - tr[k]) / (tr[k + 1] - tr[k])
        return out_hq[..., k] * (1 - w) + out_hq[..., k + 1] * w

    median = inside(0.5) if tr[0] <= 0.5 <= tr[-1] else None
    z = NormalDist().inv_cdf
    res = {}
    for q in wanted:
        if tr[0] <= q <= tr[-1]:
            res[float(q)] = inside(q)
            continue
        k = 0 if q < tr[0] else -1
        edge = out_hq[..., k]
        if median is None or tr[k] == 0.5:
            res[float(q)] = edge
        else:
            res[float(q)] = median + (edge - median) * (z(q) / z(float(tr[k])))
    return res


def _digest(parts: Mapping[str, Any], state_dict) -> str:
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for k in sorted(state_dict):
        h.update(k.encode())
        h.update(state_dict[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def _split(origins: np.ndarray, cfg: LSTMParams) -> tuple[np.ndarray, np.ndarray]:
    """Time-ordered split: the last ``val_fraction`` of origins validate;
    training origins end ``horizon`` steps before the first validation
    origin, so no training target lies in the validation period."""
    if origins.size == 0:
        return origins, origins
    n_val = max(1, int(round(origins.size * cfg.val_fraction)))
    cut = origins[-n_val]
    return origins[origins < cut - cfg.horizon], origins[origins >= cut]


def _read_checkpoint(path: str | Path) -> dict[str, Any]:
    torch = _torch()
    try:
        ck = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        # torch's own message is a dozen lines about weights_only; a file
        # that is not a model needs only saying so
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        why = "not a model file forescale wrote" if "weights_only" in str(exc) or "Unpickler" in str(exc) else first[:200]
        raise ForecastError(f"{path}: not a readable lstm checkpoint ({why}; write one with "
                            "forescale train-global)") from exc
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise ForecastError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    return ck


def _refuse_levelfree(path: Any, ck: Mapping[str, Any]) -> None:
    """A level-free (``lstm_global``) checkpoint where an ``lstm`` one is
    expected: say which forecaster takes it."""
    if ck.get("kind") == "levelfree":
        raise ForecastError(f"{path} holds a level-free global model (lstm_global), not an lstm one: use it as "
                            f"forecaster: {{name: lstm_global, params: {{checkpoint: {path}}}}} (lstm's init_from "
                            "takes a model from forescale train-global --model lstm)")


def _load_checkpoint(path: str | Path, kind: str, device: str | None) -> tuple[dict[str, Any], "LSTMParams"]:
    """A checkpoint of ``kind`` ("single" or "global") and its params, with
    ``device`` overriding the saved one."""
    ck = _read_checkpoint(path)
    _refuse_levelfree(path, ck)
    if ck.get("kind") != kind:
        other = "LSTMForecaster.load" if kind == "global" else "GlobalLSTM.load"
        held = "a per-target" if kind == "global" else "a multi-series"
        raise ForecastError(f"{path} holds {held} lstm model; use {other}")
    params = LSTMParams.model_validate_json(ck["params"])
    if device is not None:
        params = params.model_copy(update={"device": device})
    return ck, params


def _grid_ahead(name: str, last: int, start: datetime, step: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    t0 = to_epoch(start)
    if last > t0:
        raise ForecastError(f"{name}: history ends after the forecast start ({last} > {t0}): look-ahead")
    ts = (t0 // step) * step + step * np.arange(1, horizon + 1, dtype=np.int64)
    return ts, ((ts - last) // step).astype(np.int64)


# ---------------------------------------------------------------------------- per target
class LSTMForecaster(BaseForecaster):
    """One network per target. ``fit(history, covariates=None)``: the engine
    passes the extra metrics named in ``params.covariates`` as a mapping of
    name to Series (resampled to the target's grid, NaN for gaps); ``update``
    takes them the same way. ``init_from`` (a checkpoint path or a fitted
    :class:`GlobalLSTM`) starts from that model's weights and architecture.
    ``on_epoch(epoch, epochs)`` is called after every training epoch (a
    progress bar; default none)."""

    name = "lstm"
    Params = LSTMParams
    capabilities = Capabilities(takes_covariates=True, init_from=True)

    def __init__(self, params: LSTMParams | Mapping[str, Any] | None = None, *,
                 init_from: "str | Path | GlobalLSTM | LSTMForecaster | None" = None,
                 on_epoch: EpochCallback | None = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.on_epoch = on_epoch
        self._source: dict[str, Any] | None = None
        if init_from is not None:
            self._source = _source_from(init_from)
            arch = LSTMParams.model_validate_json(self._source["params"])
            if arch.covariates:
                raise ForecastError("lstm: init_from a model with covariates is not supported")
            if self.params.covariates:
                raise ForecastError("lstm: init_from cannot be combined with covariates "
                                    f"{list(self.params.covariates)}")
            self.params = self.params.model_copy(update={k: getattr(arch, k) for k in _ARCH_FIELDS})
        self._net = None
        self._scaler: RobustScaler | None = None
        self._cov_scalers: dict[str, RobustScaler] = {}
        self._cov_history: dict[str, Series] = {}
        self._offsets: np.ndarray | None = None
        self._gate: np.ndarray | None = None
        #: training range of the origin's scaled level (see ``_fade``)
        self._range: tuple[float, float] | None = None
        self.metrics: dict[str, Any] = {}
        self._digest: str | None = None
        self._window: tuple[int, int] | None = None
        self._device = None

    # -------------------------------------------------------------- contract
    @property
    def min_history(self) -> int:
        p = self.params
        if self._source is not None:
            return p.lookback  # one input window; the source model does the rest
        # enough origins that min_train_windows remain before the validation
        # split (val_fraction of them, and a gap of horizon steps)
        return p.lookback + 1 + math.ceil((p.min_train_windows + p.horizon + 1) / (1 - p.val_fraction))

    @property
    def version(self) -> str:
        if self._digest is None:
            return f"{self.name}:unfitted"
        return f"{self.name}:{self._digest}"

    def fit(self, history: Series, covariates: Mapping[str, Series] | None = None) -> None:
        self._cov_history = self._check_covariates(covariates, "fit")
        super().fit(history)

    def update(self, history: Series, covariates: Mapping[str, Series] | None = None) -> None:
        if covariates:
            new = self._check_covariates(covariates, "update")
            self._cov_history = {k: Series.concat(self._cov_history[k], v) if k in self._cov_history
                                 else v for k, v in new.items()}
        super().update(history)

    def _check_covariates(self, covariates: Mapping[str, Series] | None, verb: str) -> dict[str, Series]:
        want = list(self.params.covariates)
        got = dict(covariates or {})
        missing = [k for k in want if k not in got]
        extra = [k for k in got if k not in want]
        if missing and (verb == "fit" or len(missing) < len(want)):
            raise ForecastError(f"lstm: {verb}() is missing covariates {missing} named in params.covariates")
        if extra:
            raise ForecastError(f"lstm: covariates {extra} are not in params.covariates {want}")
        return got

    def _aligned_covs(self, ts: np.ndarray) -> list[np.ndarray]:
        out = []
        for k in self.params.covariates:
            c = self._cov_history[k]
            arr = np.full(ts.size, np.nan)
            i = np.searchsorted(c.timestamps, ts)
            ok = i < len(c)
            ok[ok] = c.timestamps[i[ok]] == ts[ok]
            arr[ok] = c.values[i[ok]]
            out.append(arr)
        return out

    def _fit(self, history: Series) -> None:
        _torch()  # fail early with the install hint
        p = self.params
        assert self.step is not None
        h = history.tail(p.max_train_steps)
        y, ts = h.values, h.timestamps
        self._scaler = RobustScaler.fit(y)
        covs = self._aligned_covs(ts)
        self._cov_scalers = {k: RobustScaler.fit(c) if np.isfinite(c).any() else RobustScaler(0.0, 1.0)
                             for k, c in zip(p.covariates, covs)}
        cov_pairs = [(c, self._cov_scalers[k]) for k, c in zip(p.covariates, covs)]
        device = _resolve_device(p.device)
        origins = training_origins(y, p)
        with _Deterministic(p.seed):
            net = _build_net(p)
            if self._source is not None:
                net.load_state_dict(self._source["state_dict"])
            tr_o, va_o = _split(origins, p)
            epochs = p.finetune_epochs if self._source is not None else p.epochs
            if self._source is None and tr_o.size < p.min_train_windows:
                raise InsufficientHistory(int(tr_o.size), p.min_train_windows,
                                          "lstm (training windows after the validation split)")
            if tr_o.size == 0 or va_o.size == 0 or epochs == 0:
                net.to(device).eval()
                self._offsets = (np.asarray(self._source["offsets"]) if self._source is not None
                                 and self._source.get("offsets") is not None else None)
                self._gate = (np.asarray(self._source["gate"]) if self._source is not None
                              and self._source.get("gate") is not None else None)
                self._range = self._source.get("range") if self._source is not None else None
                self.metrics = {"finetuned": False, "train_windows": int(tr_o.size),
                                "source": self._source["version"] if self._source else None}
            else:
                *trd, tr_base = build_features(y, ts, tr_o, self._scaler, self.step, p, cov_pairs,
                                               with_targets=True)
                *vad, va_base = build_features(y, ts, va_o, self._scaler, self.step, p, cov_pairs,
                                               with_targets=True)
                tr, va = _Data(*trd), _Data(*vad)
                sc = self._scaler
                self._range = _level_range((tr_base - sc.median) / sc.scale)
                va_fade = _fade((va_base - sc.median) / sc.scale, self._range)
                self.metrics = _train(net, p, tr, va, device, epochs, self.on_epoch)
                self.metrics["finetuned"] = self._source is not None
                if self._source is not None:
                    self.metrics["source"] = self._source["version"]
                self._offsets, self._gate = _calibration(net, va, p, device, va_fade)
        self._net = net
        self._device = device
        self._window = (int(ts[0]), int(ts[-1]))
        self._digest = _digest(self._checkpoint_meta(), net.state_dict())

    def _predict(self, ahead: np.ndarray, quantiles: Sequence[float]):
        p = self.params
        assert self._history is not None and self.step is not None and self._scaler is not None
        if int(ahead.max()) > p.horizon:
            raise ForecastError(
                f"lstm: trained for a horizon of {p.horizon} steps, asked for {int(ahead.max())} "
                "(the history is stale or the policy's horizon is longer than params.horizon)"
            )
        need = max(p.lookback, _season_steps(self.step) + 1 if p.seasonal_lag else 0)
        h = self._history.tail(need)
        covs = [(c, self._cov_scalers[k]) for k, c in zip(p.covariates, self._aligned_covs(h.timestamps))]
        seq, head, _, base = build_features(h.values, h.timestamps, np.array([len(h) - 1]),
                                            self._scaler, self.step, p, covs)
        fade = _fade((base - self._scaler.median) / self._scaler.scale, self._range)
        out = _apply_offsets(_apply_gate(_infer(self._net, seq, head, self._device), head, self._gate,
                                         p.quantiles, fade), self._offsets)
        out = _clamp_spread(out, self._gate, p.quantiles)[0]  # (H, Q)
        vals = base[0] + out * self._scaler.scale
        sel = vals[ahead - 1]
        levels = _levels_at(sel, p.quantiles, list(quantiles) + [0.5])
        return levels[0.5], {q: levels[q] for q in quantiles}

    # ----------------------------------------------------------- checkpoints
    def _checkpoint_meta(self) -> dict[str, Any]:
        assert self._scaler is not None and self._window is not None
        return {
            "params": self.params.model_dump_json(),
            "step": self.step,
            "scaler": self._scaler.to_dict(),
            "cov_scalers": {k: v.to_dict() for k, v in self._cov_scalers.items()},
            "window": {"first": self._window[0], "last": self._window[1]},
            "metrics": self.metrics,
            "offsets": None if self._offsets is None else self._offsets.tolist(),
            "gate": None if self._gate is None else self._gate.tolist(),
            "range": None if self._range is None else list(self._range),
        }

    def _checkpoint(self) -> dict[str, Any]:
        if self._net is None or self._history is None:
            raise ForecastError("lstm: save() before fit()")
        need = max(self.params.lookback, _season_steps(self.step) + 1 if self.params.seasonal_lag else 0)
        tail = self._history.tail(need)
        return {
            "format": CHECKPOINT_FORMAT,
            "kind": "single",
            **self._checkpoint_meta(),
            "digest": self._digest,
            "fit_count": self._fit_count,
            "state_dict": {k: v.detach().cpu() for k, v in self._net.state_dict().items()},
            "history": {"timestamps": tail.timestamps.tolist(), "values": tail.values.tolist(),
                        "name": tail.name},
            "cov_history": {k: {"timestamps": v.tail(need).timestamps.tolist(),
                                "values": v.tail(need).values.tolist()}
                            for k, v in self._cov_history.items()},
        }

    def save(self, path: str | Path) -> None:
        """Write a checkpoint: params, step, scaler, training window, metrics,
        conformal offsets, the weights, and the recent history the next
        forecast needs (so a restarted daemon forecasts before its next fit).
        The file is a torch checkpoint readable with ``weights_only=True``."""
        Path(path).write_bytes(_dump(self._checkpoint()))

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> "LSTMForecaster":
        """Rebuild a fitted forecaster from :meth:`save` without retraining."""
        ck, params = _load_checkpoint(path, "single", device)
        self = cls(params)
        self._restore(ck, params)
        return self

    def _restore(self, ck: dict[str, Any], params: LSTMParams) -> None:
        self.step = int(ck["step"])
        self._scaler = RobustScaler(**ck["scaler"])
        self._cov_scalers = {k: RobustScaler(**v) for k, v in ck["cov_scalers"].items()}
        self._window = (int(ck["window"]["first"]), int(ck["window"]["last"]))
        self.metrics = dict(ck["metrics"])
        self._offsets = None if ck["offsets"] is None else np.asarray(ck["offsets"])
        self._gate = None if ck.get("gate") is None else np.asarray(ck["gate"])
        self._range = None if ck.get("range") is None else tuple(ck["range"])
        net = _build_net(params)
        net.load_state_dict(ck["state_dict"])
        self._device = _resolve_device(params.device)
        self._net = net.to(self._device).eval()
        hist = ck["history"]
        self._history = Series(np.asarray(hist["timestamps"], dtype=np.int64),
                               np.asarray(hist["values"], dtype=np.float64), hist["name"])
        self._cov_history = {k: Series(np.asarray(v["timestamps"], dtype=np.int64),
                                       np.asarray(v["values"], dtype=np.float64), k)
                             for k, v in ck["cov_history"].items()}
        self._fitted_at_end = self._window[1]
        self._fit_count = int(ck["fit_count"])
        self._digest = ck["digest"]

    # pickle / copy.deepcopy go through the checkpoint (the network class is
    # built at run time and cannot be pickled by reference); the full history
    # and covariates travel alongside it
    def __getstate__(self) -> dict[str, Any]:
        if self._net is None:
            state = dict(self.__dict__)
            state["_device"] = None
            state["on_epoch"] = None  # a progress hook belongs to this process
            return state
        return {"_ckpt": _dump(self._checkpoint()), "_full_history": self._history,
                "_full_covs": self._cov_history, "_source": self._source}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "_ckpt" not in state:
            self.__dict__.update(state)
            return
        torch = _torch()
        ck = torch.load(io.BytesIO(state["_ckpt"]), map_location="cpu", weights_only=True)
        params = LSTMParams.model_validate_json(ck["params"])
        BaseForecaster.__init__(self, params)
        self.on_epoch = None
        self._source = state["_source"]
        self._restore(ck, params)
        self._history = state["_full_history"]
        self._cov_history = state["_full_covs"]


def _dump(ck: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    _torch().save(ck, buf)
    return buf.getvalue()


def _source_from(init_from: Any) -> dict[str, Any]:
    """Weights, architecture and conformal offsets of a model to start from."""
    if isinstance(init_from, (GlobalLSTM, LSTMForecaster)):
        if init_from._net is None:
            raise ForecastError("lstm: init_from model is not fitted")
        return {"params": init_from.params.model_dump_json(),
                "state_dict": {k: v.detach().cpu().clone() for k, v in init_from._net.state_dict().items()},
                "offsets": None if init_from._offsets is None else init_from._offsets.tolist(),
                "gate": _pooled_gate(init_from),
                "range": None if init_from._range is None else list(init_from._range),
                "version": init_from.version}
    ck = _read_checkpoint(init_from)
    _refuse_levelfree(init_from, ck)
    return {"params": ck["params"], "state_dict": ck["state_dict"], "offsets": ck["offsets"],
            "gate": ck.get("gate"), "range": ck.get("range"), "version": f"lstm:{ck['digest']}"}


# ---------------------------------------------------------------------------- global
class GlobalLSTM:
    """One network trained across many series (each scaled by its own robust
    scaler), forecasting any number of series in one batched call.

    >>> g = GlobalLSTM({"epochs": 20}).fit({"web": s1, "api": s2})
    >>> fcs = g.predict_many({"web": s1_now, "api": s2_now, "new": s3}, now, 12, (0.5, 0.9))

    A series the model was not trained on is scaled by a scaler fitted on
    the history passed to ``predict_many`` (its last ``max_train_steps``).
    Covariates are not supported in global mode. ``on_epoch(epoch, epochs)``
    is called after every training epoch (``forescale train-global`` draws
    its progress bar with it).

    Named ``lstm_multiseries`` (its forecasts' ``model`` and version
    prefix), not to be read as the registry's ``lstm_global``, which is
    :class:`LevelFreeLSTM`; its checkpoints (kind ``global``) start the
    per-series ``lstm`` through ``forecaster.init_from``
    (``forescale train-global --model lstm``).
    """

    name = "lstm_multiseries"
    Params = LSTMParams

    def __init__(self, params: LSTMParams | Mapping[str, Any] | None = None, *,
                 on_epoch: EpochCallback | None = None, **kwargs: Any) -> None:
        self.on_epoch = on_epoch
        if params is None or isinstance(params, Mapping):
            params = LSTMParams(**{**dict(params or {}), **kwargs})
        if params.covariates:
            raise ForecastError("lstm global mode does not take covariates "
                                f"(params.covariates = {list(params.covariates)})")
        self.params = params
        self.scalers: dict[str, RobustScaler] = {}
        self.windows: dict[str, tuple[int, int]] = {}
        self.metrics: dict[str, Any] = {}
        self._net = None
        self._offsets: np.ndarray | None = None
        #: conformal offsets per training series (the pooled ones above are
        #: for the others)
        self._series_offsets: dict[str, np.ndarray] = {}
        #: median gate per training series, and pooled (for the others)
        self._gates: dict[str, np.ndarray] = {}
        self._gate: np.ndarray | None = None
        #: training range of the origin's scaled level per series, and pooled
        self._ranges: dict[str, tuple[float, float]] = {}
        self._range: tuple[float, float] | None = None
        self._digest: str | None = None
        self._device = None

    @property
    def version(self) -> str:
        return f"{self.name}:{self._digest}" if self._digest else f"{self.name}:unfitted"

    @property
    def fitted(self) -> bool:
        return self._net is not None

    def fit(self, series: Mapping[str, Series] | Sequence[Series]) -> "GlobalLSTM":
        p = self.params
        named = _named(series)
        seqs, heads, tgts, vseqs, vheads, vtgts = [], [], [], [], [], []
        vkeys: list[str] = []
        vfades: list[np.ndarray] = []
        tr_levels: list[np.ndarray] = []
        skipped: dict[str, str] = {}
        for key, s in named.items():
            s = s.tail(p.max_train_steps)
            step = _step_of(s)
            o = training_origins(s.values, p) if step else np.zeros(0, dtype=np.int64)
            tr_o, va_o = _split(o, p)
            if tr_o.size == 0 or va_o.size == 0:
                skipped[key] = f"too short ({s.n_valid} valid samples)"
                continue
            sc = RobustScaler.fit(s.values)
            self.scalers[key] = sc
            self.windows[key] = (int(s.timestamps[0]), int(s.timestamps[-1]))
            vkeys.append(key)
            bases = []
            for orig, dst in ((tr_o, (seqs, heads, tgts)), (va_o, (vseqs, vheads, vtgts))):
                a, b, c, base = build_features(s.values, s.timestamps, orig, sc, step, p, with_targets=True)
                dst[0].append(a), dst[1].append(b), dst[2].append(c)
                bases.append((base - sc.median) / sc.scale)
            self._ranges[key] = _level_range(bases[0])
            tr_levels.append(bases[0])
            vfades.append(_fade(bases[1], self._ranges[key]))
        if not seqs or sum(len(x) for x in seqs) < p.min_train_windows:
            raise InsufficientHistory(sum(len(x) for x in seqs), p.min_train_windows,
                                      "lstm global model (training windows)")
        tr = _Data(np.concatenate(seqs), np.concatenate(heads), np.concatenate(tgts))
        va = _Data(np.concatenate(vseqs), np.concatenate(vheads), np.concatenate(vtgts))
        del seqs, heads, tgts
        device = _resolve_device(p.device)
        with _Deterministic(p.seed):
            net = _build_net(p)
            self.metrics = _train(net, p, tr, va, device, p.epochs, self.on_epoch)
            self.metrics.update(series=len(self.scalers), skipped=skipped)
            pred = _infer(net, va.seq, va.head, device)
            self._gates, self._gate = {}, None
            self._range = _level_range(np.concatenate(tr_levels))
            if p.median_gate:
                fade = np.concatenate(vfades)
                self._gate = _fit_gate(pred, va.head, va.target, p.quantiles, fade)
                lo = 0
                for key, part in zip(vkeys, vtgts):
                    sl = slice(lo, lo + len(part))
                    self._gates[key] = _fit_gate(pred[sl], va.head[sl], va.target[sl], p.quantiles, fade[sl])
                    lo += len(part)
                gates = np.concatenate([np.broadcast_to(self._gates[k], (len(part),) + self._gates[k].shape)
                                        for k, part in zip(vkeys, vtgts)])
                pred = _apply_gate(pred, va.head, gates, p.quantiles, fade)
            shift = not p.median_gate
            self._offsets = _conformal(pred, va.target, p.quantiles, median=shift) if p.calibrate else None
            self._series_offsets = {}
            if p.calibrate:
                lo = 0
                for key, part in zip(vkeys, vtgts):
                    sl = slice(lo, lo + len(part))
                    lo += len(part)
                    # too few windows for a step: the pooled offset there
                    self._series_offsets[key] = np.where(
                        np.isfinite(va.target[sl]).sum(0)[:, None] >= 20,
                        _conformal(pred[sl], va.target[sl], p.quantiles, median=shift), self._offsets)
        self._net, self._device = net, device
        self._digest = _digest(self._meta(), net.state_dict())
        return self

    def _meta(self) -> dict[str, Any]:
        return {"params": self.params.model_dump_json(),
                "scalers": {k: v.to_dict() for k, v in self.scalers.items()},
                "windows": {k: list(v) for k, v in self.windows.items()},
                "metrics": self.metrics,
                "offsets": None if self._offsets is None else self._offsets.tolist(),
                "series_offsets": {k: v.tolist() for k, v in self._series_offsets.items()},
                "gates": {k: v.tolist() for k, v in self._gates.items()},
                "gate": None if self._gate is None else self._gate.tolist(),
                "ranges": {k: list(v) for k, v in self._ranges.items()},
                "range": None if self._range is None else list(self._range)}

    def predict_many(self, histories: Mapping[str, Series], start: datetime, horizon: int,
                     quantiles: Sequence[float] = (0.5, 0.9), *,
                     errors: dict[str, str] | None = None) -> dict[str, Forecast]:
        """Forecast every series in ``histories`` at ``start`` with one
        batched forward pass. A series that cannot be forecast (too short,
        stale beyond the horizon) raises, unless ``errors`` is given: then it
        is left out of the result and its reason recorded there."""
        if self._net is None:
            raise ForecastError("lstm global: predict_many() before fit()")
        p = self.params
        levels = requested_levels("lstm global", horizon, quantiles)
        rows: list[tuple[str, np.ndarray, np.ndarray, float, float]] = []
        fades: list[np.ndarray | None] = []
        seqs, heads = [], []
        for key, s in histories.items():
            try:
                step = _step_of(s)
                if step is None or s.n_valid < 1 or len(s) < 2:
                    raise InsufficientHistory(s.n_valid, p.lookback, f"lstm global ({key})")
                ts, ahead = _grid_ahead(f"lstm global ({key})", int(s.timestamps[-1]), start, step, horizon)
                if int(ahead.max()) > p.horizon:
                    raise ForecastError(f"lstm global ({key}): trained for {p.horizon} steps ahead, "
                                        f"asked for {int(ahead.max())}")
                sc = self.scalers.get(key) or RobustScaler.fit(s.values[-p.max_train_steps:])
                need = max(p.lookback, _season_steps(step) + 1 if p.seasonal_lag else 0)
                h = s.tail(need)
                a, b, _, base = build_features(h.values, h.timestamps, np.array([len(h) - 1]), sc, step, p)
            except ForecastError as exc:
                if errors is None:
                    raise
                errors[key] = str(exc)
                continue
            seqs.append(a), heads.append(b)
            rows.append((key, ts, ahead, float(base[0]), sc.scale))
            fades.append(_fade((base - sc.median) / sc.scale, self._ranges.get(key, self._range)))
        if not rows:
            return {}
        head = np.concatenate(heads)
        out = _infer(self._net, np.concatenate(seqs), head, self._device)
        gates = None
        if self._gate is not None:
            gates = np.stack([self._gates.get(r[0], self._gate) for r in rows])
            fade = None if any(f is None for f in fades) else np.concatenate(fades)
            out = _apply_gate(out, head, gates, p.quantiles, fade)
        if self._offsets is not None:
            out = _apply_offsets(out, np.stack([self._series_offsets.get(r[0], self._offsets) for r in rows]))
        else:
            out = _apply_offsets(out, None)
        out = _clamp_spread(out, gates, p.quantiles)
        result: dict[str, Forecast] = {}
        version = self.version
        for i, (key, ts, ahead, base, scale) in enumerate(rows):
            vals = np.maximum(base + out[i, ahead - 1, :] * scale, 0.0)
            lv = _levels_at(vals, p.quantiles, levels + [0.5])
            result[key] = Forecast(made_at=start, timestamps=ts, point=lv[0.5],
                                   quantiles={q: lv[q] for q in levels}, model=self.name,
                                   model_version=version)
        return result

    def save(self, path: str | Path) -> None:
        if self._net is None:
            raise ForecastError("lstm global: save() before fit()")
        ck = {"format": CHECKPOINT_FORMAT, "kind": "global", **self._meta(), "digest": self._digest,
              "state_dict": {k: v.detach().cpu() for k, v in self._net.state_dict().items()}}
        Path(path).write_bytes(_dump(ck))

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> "GlobalLSTM":
        ck, params = _load_checkpoint(path, "global", device)
        self = cls(params)
        self.scalers = {k: RobustScaler(**v) for k, v in ck["scalers"].items()}
        self.windows = {k: (int(v[0]), int(v[1])) for k, v in ck["windows"].items()}
        self.metrics = dict(ck["metrics"])
        self._offsets = None if ck["offsets"] is None else np.asarray(ck["offsets"])
        self._series_offsets = {k: np.asarray(v) for k, v in (ck.get("series_offsets") or {}).items()}
        self._gates = {k: np.asarray(v) for k, v in (ck.get("gates") or {}).items()}
        self._gate = None if ck.get("gate") is None else np.asarray(ck["gate"])
        self._ranges = {k: (float(v[0]), float(v[1])) for k, v in (ck.get("ranges") or {}).items()}
        self._range = None if ck.get("range") is None else tuple(ck["range"])
        net = _build_net(params)
        net.load_state_dict(ck["state_dict"])
        self._device = _resolve_device(params.device)
        self._net = net.to(self._device).eval()
        self._digest = ck["digest"]
        return self


def _named(series: Mapping[str, Series] | Sequence[Series]) -> dict[str, Series]:
    if isinstance(series, Mapping):
        return dict(series)
    out: dict[str, Series] = {}
    for i, s in enumerate(series):
        key = s.name or f"series{i}"
        if key in out:
            key = f"{key}#{i}"
        out[key] = s
    return out


def _step_of(s: Series) -> int | None:
    st = s.step()
    if st is None or st.total_seconds() <= 0:
        return None
    return int(round(st.total_seconds()))




# ---------------------------------------------------------------------------- level-free global model
#: steps ahead with their own output head; steps between are interpolated
#: (5-minute data: 5, 10, 15, 30 min, 1, 2, 4, 6, 12, 24 h)
PLAN_HORIZONS = (1, 2, 3, 6, 12, 24, 48, 72, 144, 288)
#: trained levels: the planner's 0.5/0.8/0.9/0.95/0.99 and their mirrors
PLAN_LEVELS = (0.01, 0.05, 0.1, 0.2, 0.5, 0.8, 0.9, 0.95, 0.99)
#: hourly blocks of the last day summarised for the head
_PROFILE_BLOCKS = 24


@functools.lru_cache(maxsize=64)
def _reach_of(path: str, mtime_ns: int) -> int | None:
    try:
        ck = _read_checkpoint(path)
        if ck.get("kind") != "levelfree":
            return None
        return int(json.loads(ck["params"]).get("horizons", PLAN_HORIZONS)[-1])
    except Exception:  # noqa: BLE001 - unreadable: the fit reports it
        return None


def _checkpoint_reach(path: str) -> int | None:
    """The furthest step a saved level-free model forecasts (read once per
    file version)."""
    try:
        return _reach_of(str(path), Path(path).stat().st_mtime_ns)
    except OSError:
        return None


class LevelFreeParams(ForecasterParams):
    """Settings of :class:`LevelFreeLSTM` (steps of the series: 5-minute
    data, lookback 48 = 4 hours)."""

    lookback: int = Field(48, ge=4)
    horizons: tuple[int, ...] = PLAN_HORIZONS
    quantiles: tuple[float, ...] = PLAN_LEVELS
    hidden_size: int = Field(64, ge=1)
    head_width: int = Field(128, ge=1)
    epochs: int = Field(12, ge=0)
    batch_size: int = Field(512, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(3, ge=1)
    #: share of each series' (time-ordered) training origins kept for validation
    val_fraction: float = Field(0.2, gt=0.0, lt=0.9)
    #: every n-th origin trains (1: every origin)
    origin_stride: int = Field(1, ge=1)
    #: every n-th origin of the series' own recent history calibrates it
    #: and chooses its median gate (each target at each fit: most of a
    #: fleet's cold cycle; 3 costs a third, at some accuracy)
    calibration_stride: int = Field(1, ge=1)
    max_train_steps: int = Field(8064, ge=16)
    min_train_windows: int = Field(64, ge=1)
    #: conformal correction per horizon and level on each series' own
    #: recent errors (the last ``calibration_steps`` of its history)
    calibrate: bool = True
    calibration_steps: int = Field(2016, ge=0)
    #: the series' own calibration also shifts the median, by the median of
    #: its errors there (a bias correction per series and horizon; off: the
    #: median is the network's and the gate's, chosen in training)
    calibrate_median: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    #: registry forecaster only: start from this saved global model instead
    #: of training on the one series (``LevelFreeLSTM.save``)
    checkpoint: str | None = None
    #: registry forecaster with a checkpoint: epochs of fine-tuning on the series
    finetune_epochs: int = Field(0, ge=0)
    #: each head horizon's weight in the training loss: ``equal``, or
    #: ``persistence``: divided by the mean persistence error at that
    #: horizon over the training windows (in the network's units), so every
    #: horizon counts by its skill over persistence, not by its error size
    horizon_loss: Literal["equal", "persistence"] = "persistence"
    #: with its calibration, each series also shrinks the network's median
    #: change toward persistence per head horizon, by the share that had
    #: the lowest absolute error on its own recent windows
    median_gate: bool = True
    #: what else the median gate may move the median toward, beside the
    #: value at the origin: ``seasonal_naive`` (the same time of day a whole
    #: number of days before the target) and ``seasonal_persistence`` (the
    #: value at the origin plus the change over the same lead then); per
    #: head horizon the shares of the network's change and of each anchor's
    #: (summing to at most 1, the rest persistence) with the lowest absolute
    #: error on the series' own windows. Empty: toward persistence only
    gate_anchors: tuple[Literal["seasonal_naive", "seasonal_persistence"], ...] = ("seasonal_persistence",)
    #: networks trained from seeds ``seed, seed + 1, ...`` whose quantiles
    #: are averaged (each costs its training time and inference again)
    ensemble: int = Field(3, ge=1, le=16)

    #: (for the load-time check of how far the policy reads ahead)
    max_steps_field: ClassVar[str] = "horizons"

    @property
    def max_steps(self) -> int | None:
        """The furthest head: the checkpoint's (what it was trained for),
        else this one's; None when the checkpoint cannot be read (its
        forecaster's fit says why)."""
        if self.checkpoint is not None:
            return _checkpoint_reach(self.checkpoint)
        return self.horizons[-1]

    @field_validator("quantiles")
    @classmethod
    def _levels(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        return _trained_levels(v)

    @field_validator("checkpoint")
    @classmethod
    def _relative_to_the_file(cls, v: str | None, info: ValidationInfo) -> str | None:
        """In a config file: relative to the file, and it must exist (as
        ``forecaster.init_from``)."""
        if v is None or info.context is None or "base_dir" not in info.context:
            return v
        path, base = Path(v), info.context["base_dir"]
        if not path.is_absolute() and base is not None:
            path = Path(base) / path
        if not path.exists():
            raise ValueError(f"no such file {path} (train one with forescale train-global --model lstm_global)")
        return str(path)

    @field_validator("horizons")
    @classmethod
    def _horizons(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        hs = tuple(sorted({int(h) for h in v}))
        if not hs or hs[0] < 1:
            raise ValueError(f"horizons must be positive steps, got {list(v)}")
        if hs[0] != 1:
            raise ValueError(f"horizons must include 1 (the next step), got {list(hs)}")
        return hs

    @property
    def horizon(self) -> int:
        """The farthest step forecast (what ``_split`` keeps apart)."""
        return self.horizons[-1]


#: what a checkpoint saved before each of these settings was trained with
_LEVELFREE_BEFORE = {"horizon_loss": "equal", "median_gate": False, "ensemble": 1, "gate_anchors": ()}


def n_levelfree_head(cfg: LevelFreeParams) -> int:
    return 6 * len(cfg.horizons) + _PROFILE_BLOCKS + 1


def _rolling_scale(yf: np.ndarray, origins: np.ndarray, window: int) -> np.ndarray:
    """The local scale at each origin: the standard deviation of the last
    ``window`` steps (observed ones), at least 1 % of their mean magnitude
    and never zero."""
    ok = np.isfinite(yf)
    v = np.where(ok, yf, 0.0)
    c0 = np.concatenate([[0], np.cumsum(ok)])
    c1 = np.concatenate([[0.0], np.cumsum(v)])
    c2 = np.concatenate([[0.0], np.cumsum(v * v)])
    hi = origins + 1
    lo = np.clip(hi - window, 0, None)
    n = np.maximum(c0[hi] - c0[lo], 1)
    mean = (c1[hi] - c1[lo]) / n
    var = np.maximum((c2[hi] - c2[lo]) / n - mean * mean, 0.0)
    return np.maximum(np.maximum(np.sqrt(var), 0.01 * np.abs(mean)), 1e-9)


def levelfree_features(y: np.ndarray, ts: np.ndarray, origins: np.ndarray, step: int, cfg: LevelFreeParams,
                       *, with_targets: bool = False):
    """Level-free inputs for the windows ending at each origin: every value
    enters as ``asinh((v - y[o]) / scale)``, relative to the value at the
    origin ``y[o]`` and divided by the local scale (:func:`_rolling_scale`
    over the last day), so a series at any level (or one that moved to a
    new level) looks the same to the network.

    ``seq`` (B, lookback, 7): the value, a missing flag, the value one day
    earlier, time of day and day of week. ``head`` (B, n_head): per head
    horizon ``h`` the value at the same time of day in the history (one day
    before the target, or more for ``h`` beyond a day) and the change over
    ``h`` there, with the target's calendar; the hourly profile of the last
    day; and ``asinh(y[o] / scale)`` (how far the series is from zero, in
    local scales). Returns ``(seq, head, targets, base, scale)``; targets
    (B, K) in the same units, NaN where missing. Reads no index after an
    origin for the inputs."""
    origins = np.asarray(origins, dtype=np.int64)
    L, K = cfg.lookback, np.asarray(cfg.horizons, dtype=np.int64)
    S = _season_steps(step)
    yf = hold_forward(y)
    miss = np.isnan(y).astype(np.float32)
    scale = _rolling_scale(yf, origins, S)
    base = yf[origins]
    base = np.where(np.isfinite(base), base, 0.0)

    def z(v: np.ndarray, ok: np.ndarray) -> np.ndarray:
        shape = (-1,) + (1,) * (v.ndim - 1)
        r = np.arcsinh((v - base.reshape(shape)) / scale.reshape(shape))
        return np.where(ok & np.isfinite(r), r, 0.0)

    win = origins[:, None] + np.arange(-L + 1, 1)[None, :]
    wok = win >= 0
    wi = np.clip(win, 0, None)
    lag = win - S
    lok = lag >= 0
    wts = ts[origins][:, None] + step * np.arange(-L + 1, 1)[None, :]
    seq = np.concatenate([z(yf[wi], wok)[..., None], np.where(wok, miss[wi], 1.0)[..., None],
                          z(yf[np.clip(lag, 0, None)], lok)[..., None], _calendar(wts)], axis=-1)

    days = -(-K // S)  # whole days back to the same time of day
    j = origins[:, None] + K[None, :] - S * days[None, :]
    j0 = origins[:, None] - S * days[None, :]
    jok = j0 >= 0
    same = yf[np.clip(j, 0, None)]
    change = np.arcsinh((same - yf[np.clip(j0, 0, None)]) / scale[:, None])
    tts = ts[origins][:, None] + step * K[None, :]
    hz = np.concatenate([z(same, jok)[..., None], np.where(jok & np.isfinite(change), change, 0.0)[..., None],
                         (~jok).astype(np.float64)[..., None], _calendar(tts)[..., :3]], axis=-1)
    per = max(1, S // _PROFILE_BLOCKS)
    pw = origins[:, None] + np.arange(-per * _PROFILE_BLOCKS + 1, 1)[None, :]
    prof = z(yf[np.clip(pw, 0, None)], pw >= 0).reshape(origins.size, _PROFILE_BLOCKS, per).mean(-1)
    head = np.concatenate([hz.reshape(origins.size, -1), prof,
                           np.clip(np.arcsinh(base / scale), -10, 10)[:, None]], axis=-1)
    # the calendar's last column (cos of day of week) is left out of the
    # head to keep 6 per horizon; sin/cos of the time of day and sin of the
    # day of week place the target in the week
    targets = None
    if with_targets:
        t = origins[:, None] + K[None, :]
        tok = t < y.size
        targets = z(y[np.clip(t, 0, y.size - 1)], tok).astype(np.float32)
        targets[~tok | ~np.isfinite(y[np.clip(t, 0, y.size - 1)])] = np.nan
    return seq.astype(np.float32), head.astype(np.float32), targets, base, scale


def _build_levelfree_net(cfg: LevelFreeParams, members: Sequence[Any] | None = None):
    """The network (``cfg.ensemble`` > 1: the ensemble, of ``members`` if
    given, else of fresh networks)."""
    torch = _torch()
    nn = torch.nn

    class LevelFreeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(7, cfg.hidden_size, batch_first=True)
            self.k, self.q = len(cfg.horizons), len(cfg.quantiles)
            self.head = nn.Sequential(
                nn.Linear(cfg.hidden_size + n_levelfree_head(cfg), cfg.head_width), nn.ReLU(),
                nn.Linear(cfg.head_width, self.k * self.q))
            # zero-initialised output: untrained, it forecasts persistence
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)
            self.m = cfg.quantiles.index(0.5)

        def forward(self, seq, head):
            out, _ = self.rnn(seq)
            raw = self.head(torch.cat([out[:, -1, :], head], dim=-1)).float().view(-1, self.k, self.q)
            return _monotone(raw, self.m)

    if cfg.ensemble == 1:
        return LevelFreeNet()

    class LevelFreeEnsemble(nn.Module):
        """``ensemble`` networks trained from different seeds; the output is
        their mean per level (quantile averaging: still non-crossing)."""

        def __init__(self) -> None:
            super().__init__()
            self.members = nn.ModuleList(members or [LevelFreeNet() for _ in range(cfg.ensemble)])

        def forward(self, seq, head):
            return torch.stack([m(seq, head) for m in self.members]).mean(0)

    return LevelFreeEnsemble()


#: the median gate's grid: the share of the network's median change kept
_MEDIAN_GATE_GRID = np.linspace(0.0, 1.0, 11)
#: the anchors a gate can move the median toward (its columns after the network's share)
GATE_ANCHORS = ("seasonal_naive", "seasonal_persistence")


def _gate_cols(anchors: Sequence[str]) -> list[int]:
    """The gate's columns that can be non-zero: the network's share and
    each allowed anchor's."""
    return [0] + [1 + GATE_ANCHORS.index(a) for a in anchors]


@functools.lru_cache(maxsize=8)
def _gate_grid(anchors: tuple[str, ...]) -> np.ndarray:
    """(G, 1 + len(GATE_ANCHORS)) the gate's candidates: the shares of the
    network's change and of each allowed anchor's (0 for the others), on a
    0.1 grid, summing to at most 1; the network-only ones first."""
    cols = _gate_cols(anchors)
    steps = np.arange(11)
    combos = np.array(np.meshgrid(*[steps] * len(cols), indexing="ij")).reshape(len(cols), -1).T
    combos = combos[combos.sum(1) <= 10]
    combos = combos[np.lexsort(combos.T[::-1][:-1])] if len(cols) > 1 else combos
    grid = np.zeros((combos.shape[0], 1 + len(GATE_ANCHORS)))
    grid[:, cols] = combos / 10.0
    return grid


def _gate_anchors(head: np.ndarray, k: int) -> np.ndarray:
    """(B, k, len(GATE_ANCHORS)): per head horizon each anchor in the
    network's units, read from the head inputs of
    :func:`levelfree_features`: the seasonal-naive value and the change
    over the same lead a whole number of days before (the value at the
    origin plus that change is seasonal persistence); 0, the value at the
    origin, where there is no such history."""
    return head[:, :6 * k].reshape(head.shape[0], k, 6)[:, :, :2]


def _median_gate(pred: np.ndarray, target: np.ndarray, m: int, anchors: np.ndarray | None = None,
                 allowed: Sequence[str] = ()) -> np.ndarray:
    """Per head horizon the gate of the median with the lowest mean absolute
    error on ``target``: without ``allowed`` anchors (K,) the share ``w``
    of the network's median change (from the value at the origin, which is
    0 in these units); with them (K, 1 + len(GATE_ANCHORS)) the shares of
    the network's change and of each anchor (``anchors``:
    :func:`_gate_anchors`). Where fewer than 20 targets: the network's own
    median."""
    med = pred[:, :, m]  # (B, K)
    grid = _MEDIAN_GATE_GRID[:, None] if not allowed else _gate_grid(tuple(allowed))
    cols = _gate_cols(allowed)
    out = np.zeros((med.shape[1], grid.shape[1]))
    out[:, 0] = 1.0
    for k in range(med.shape[1]):
        ok = np.isfinite(target[:, k])
        if ok.sum() < 20:
            continue
        x = np.stack([med[ok, k]] + [anchors[ok, k, c - 1] for c in cols[1:]])  # (len(cols), n)
        err = np.abs(target[ok, k][None, :] - grid[:, cols] @ x).sum(1)
        out[k] = grid[int(np.argmin(err))]
    return out[:, 0] if not allowed else out


def _gated(pred: np.ndarray, gate: np.ndarray, m: int, anchors: np.ndarray | None = None) -> np.ndarray:
    """(B, K, Q) with every level moved by the gated median's change from
    the network's: the median shrunk toward the value at the origin by a
    (K,) gate, or with a (K, 1 + len(GATE_ANCHORS)) gate the network's share
    of it plus each anchor's share of that anchor (``anchors``:
    :func:`_gate_anchors`); the spread kept."""
    g = np.asarray(gate, dtype=float)
    med = pred[:, :, m]
    new = (g if g.ndim == 1 else g[:, 0])[None, :] * med
    if g.ndim == 2 and anchors is not None:
        new = new + np.einsum("ka,bka->bk", g[:, 1:], anchors)
    return pred + (new - med)[:, :, None]


def _persistence_weights(target: np.ndarray) -> np.ndarray:
    """(K,) loss weights: one over each horizon's mean absolute target (the
    targets are relative to the value at the origin, so that is the
    persistence forecast's error there), scaled to mean 1."""
    err = np.nanmean(np.abs(target), axis=0)
    w = 1.0 / np.maximum(np.where(np.isfinite(err), err, 1.0), 1e-3)
    return (w / w.mean()).astype(np.float32)


def _levelfree_origins(y: np.ndarray, cfg: LevelFreeParams, step: int, stride: int) -> np.ndarray:
    """Origins with a day of history before them and at least half of the
    lookback observed, every ``stride`` steps, ending at the last sample."""
    S = _season_steps(step)
    n = y.size
    ok = np.concatenate([[0], np.cumsum(~np.isnan(y))])
    first = max(cfg.lookback, S) - 1
    o = np.arange(n - 1, first - 1, -stride)[::-1]
    return o[(ok[o + 1] - ok[o + 1 - cfg.lookback]) * 2 >= cfg.lookback]


class LevelFreeLSTM:
    """The global, level-free quantile LSTM: one network trained across many
    series, forecasting any series (seen or not) at the planning horizons.

    >>> g = LevelFreeLSTM({"epochs": 12}).fit({"web": s1, "api": s2})
    >>> g.calibrate({"new": s3})           # conformal offsets on s3's own errors
    >>> fcs = g.predict_many({"new": s3, "web": s1}, now, 72, (0.5, 0.9, 0.99))

    Inputs and targets are level free (:func:`levelfree_features`); the
    outputs are direct quantiles at every step in ``horizons`` (pinball loss
    over ``quantiles``), read as ``y[o] + scale * sinh(output)`` and
    interpolated linearly between head horizons. ``calibrate`` shifts each
    level at each head horizon by the empirical quantile of the series' own
    recent errors there (conformal, as in :func:`_conformal`); a series
    without its own offsets gets the ones pooled over the validation windows
    of training. CUDA and mixed precision when present (``device="auto"``).
    """

    name = "lstm_global"
    Params = LevelFreeParams

    def __init__(self, params: LevelFreeParams | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        if params is None or isinstance(params, Mapping):
            params = LevelFreeParams(**{**dict(params or {}), **kwargs})
        self.params = params
        self.metrics: dict[str, Any] = {}
        self._net = None
        self._device = None
        self._offsets: np.ndarray | None = None  # (K, Q) pooled over the validation windows
        self._series_offsets: dict[str, np.ndarray] = {}
        self._series_gates: dict[str, np.ndarray] = {}
        self._digest: str | None = None

    @property
    def version(self) -> str:
        return f"{self.name}:{self._digest}" if self._digest else f"{self.name}:unfitted"

    @property
    def fitted(self) -> bool:
        return self._net is not None

    @property
    def n_parameters(self) -> int:
        return 0 if self._net is None else sum(int(p.numel()) for p in self._net.parameters())

    # ------------------------------------------------------------------ training
    def _windows(self, named: Mapping[str, Series]) -> tuple[_Data, _Data, list[str], list[int]]:
        p = self.params
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("s", "h", "t", "vs", "vh", "vt")}
        keys, sizes = [], []
        for key, s in named.items():
            s = s.tail(p.max_train_steps)
            step = _step_of(s)
            if step is None:
                continue
            o = _levelfree_origins(s.values[:-1], p, step, p.origin_stride)
            tr_o, va_o = _split(o, p)
            if tr_o.size == 0 or va_o.size == 0:
                continue
            for orig, (a, b, c) in ((tr_o, ("s", "h", "t")), (va_o, ("vs", "vh", "vt"))):
                seq, head, tgt, _, _ = levelfree_features(s.values, s.timestamps, orig, step, p, with_targets=True)
                keep = np.isfinite(tgt).any(axis=1)
                parts[a].append(seq[keep]), parts[b].append(head[keep]), parts[c].append(tgt[keep])
            keys.append(key)
            sizes.append(len(parts["vt"][-1]))
        n = sum(len(x) for x in parts["t"])
        if n < p.min_train_windows:
            raise InsufficientHistory(n, p.min_train_windows, "lstm global (training windows)")
        cat = {k: np.concatenate(v) for k, v in parts.items()}
        return (_Data(cat["s"], cat["h"], cat["t"]), _Data(cat["vs"], cat["vh"], cat["vt"]), keys, sizes)

    def fit(self, series: Mapping[str, Series] | Sequence[Series], *,
            on_epoch: EpochCallback | None = None) -> "LevelFreeLSTM":
        """Train on every series (each its last ``max_train_steps``), then
        pool conformal offsets over the validation windows."""
        p = self.params
        tr, va, keys, _ = self._windows(_named(series))
        device = _resolve_device(p.device)
        weights = _persistence_weights(tr.target) if p.horizon_loss == "persistence" else None
        net = self._net
        members = (list(net.members) if p.ensemble > 1 else [net]) if net is not None else [None] * p.ensemble
        runs = []
        for i, member in enumerate(members):  # member i is the single model of seed + i
            one = p.model_copy(update={"seed": p.seed + i, "ensemble": 1})
            with _Deterministic(one.seed):
                members[i] = member = _build_levelfree_net(one) if member is None else member
                runs.append(_train(member, one, tr, va, device, p.epochs, on_epoch, weights))
        if net is None:
            net = members[0] if p.ensemble == 1 else _build_levelfree_net(p, members)
        net.to(device).eval()
        self.metrics = dict(runs[0])
        if len(runs) > 1:
            self.metrics["members"] = runs
            self.metrics["epochs_run"] = sum(r["epochs_run"] for r in runs)
        self.metrics["series"] = len(keys)
        self._net, self._device = net, device
        pred = _infer(net, va.seq, va.head, device)
        self._offsets = _conformal(pred, va.target, p.quantiles, median=False) if p.calibrate else None
        self._series_offsets, self._series_gates = {}, {}
        self._digest = _digest({"params": p.model_dump_json(), "metrics": self.metrics}, net.state_dict())
        return self

    def finetune(self, series: Mapping[str, Series], epochs: int) -> "LevelFreeLSTM":
        """A copy trained ``epochs`` more on ``series`` (per-series mode)."""
        other = copy.deepcopy(self)
        other.params = self.params.model_copy(update={"epochs": epochs})
        return other.fit(series)

    def calibrate(self, histories: Mapping[str, Series], *, median: bool | None = None) -> dict[str, int]:
        """Conformal offsets per series from its own recent errors
        (:meth:`calibration_offsets`), kept in this model under each key.
        Returns the number of origins used per series."""
        used: dict[str, int] = {}
        gates: dict[str, np.ndarray] = {}
        for key, off in self.calibration_offsets(histories, used=used, median=median, gates=gates).items():
            self._series_offsets[key] = off
            if key in gates:
                self._series_gates[key] = gates[key]
        return used

    def calibration_offsets(self, histories: Mapping[str, Series], *, used: dict[str, int] | None = None,
                            median: bool | None = None, median_gate: bool | None = None,
                            gate_anchors: Sequence[str] | None = None,
                            gates: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Conformal offsets per series from its own recent errors: forecasts
        from origins in the last ``calibration_steps`` of each history
        (reading nothing after each origin) against what followed; a series
        with too few origins gets none (the pooled offsets apply). The model
        is not changed: a model shared by many targets stays read-only, each
        target keeping its own offsets (``predict_many(offsets=...)``).
        ``median``: shift the median too (default: ``calibrate_median``).
        ``median_gate`` (default: the model's ``median_gate``): first choose
        each series' median gate on the same windows (:func:`_median_gate`),
        put into ``gates`` per key, and calibrate the gated forecasts;
        ``gate_anchors`` (default: the model's) what else it may move the
        median toward."""
        p = self.params
        median = p.calibrate_median if median is None else median
        median_gate = p.median_gate if median_gate is None else median_gate
        gate_anchors = p.gate_anchors if gate_anchors is None else tuple(gate_anchors)
        out: dict[str, np.ndarray] = {}
        for key, s in histories.items():
            step = _step_of(s)
            if step is None or not p.calibrate:
                continue
            h = s.tail(p.calibration_steps + _season_steps(step) + p.lookback)
            o = _levelfree_origins(h.values[:-1], p, step, p.calibration_stride)
            o = o[o >= len(h) - 1 - p.calibration_steps]
            if o.size < 20:
                continue
            seq, head, tgt, _, _ = levelfree_features(h.values, h.timestamps, o, step, p, with_targets=True)
            pred = _infer(self._net, seq, head, self._device)
            if median_gate:
                anchors = _gate_anchors(head, len(p.horizons))
                gate = _median_gate(pred, tgt, p.quantiles.index(0.5), anchors, gate_anchors)
                pred = _gated(pred, gate, p.quantiles.index(0.5), anchors)
                if gates is not None:
                    gates[key] = gate
            own = _conformal(pred, tgt, p.quantiles, median=median)
            enough = np.isfinite(tgt).sum(0)[:, None] >= 20
            out[key] = np.where(enough, own, self._offsets if self._offsets is not None else 0.0)
            if used is not None:
                used[key] = int(o.size)
        return out

    # ---------------------------------------------------------------- inference
    def predict_many(self, histories: Mapping[str, Series], start: datetime, horizon: int,
                     quantiles: Sequence[float] = (0.5, 0.9), *,
                     errors: dict[str, str] | None = None,
                     offsets: Mapping[str, np.ndarray | None] | None = None,
                     gates: Mapping[str, np.ndarray | None] | None = None) -> dict[str, Forecast]:
        """Forecast every series in ``histories`` at ``start`` in one
        batched forward pass; a series that cannot be forecast raises, or,
        with ``errors`` given, is left out and its reason recorded there.
        ``offsets``: conformal offsets per key (from
        :meth:`calibration_offsets`) used instead of the ones kept in the
        model; a key mapped to None, or absent, gets the model's own (its
        calibrated ones, else the pooled ones). ``gates``: median gates per
        key likewise (a key with none given or kept forecasts ungated)."""
        if self._net is None:
            raise ForecastError("lstm global: predict_many() before fit()")
        p = self.params
        levels = requested_levels("lstm global", horizon, quantiles)
        rows, seqs, heads = [], [], []
        for key, s in histories.items():
            try:
                step = _step_of(s)
                if step is None or s.n_valid < 1:
                    raise InsufficientHistory(s.n_valid, 2, f"lstm global ({key})")
                ts, ahead = _grid_ahead(f"lstm global ({key})", int(s.timestamps[-1]), start, step, horizon)
                if int(ahead.max()) > p.horizons[-1]:
                    raise ForecastError(f"lstm global ({key}): trained for {p.horizons[-1]} steps ahead, "
                                        f"asked for {int(ahead.max())}")
                h = s.tail(_season_steps(step) * (-(-p.horizons[-1] // _season_steps(step)) + 1) + p.lookback)
                a, b, _, base, scale = levelfree_features(h.values, h.timestamps, np.array([len(h) - 1]), step, p)
            except ForecastError as exc:
                if errors is None:
                    raise
                errors[key] = str(exc)
                continue
            seqs.append(a), heads.append(b)
            rows.append((key, ts, ahead, float(base[0]), float(scale[0])))
        if not rows:
            return {}
        out = _infer(self._net, np.concatenate(seqs), np.concatenate(heads), self._device)
        for i, r in enumerate(rows):
            g = (gates or {}).get(r[0])
            g = self._series_gates.get(r[0]) if g is None else g
            if g is not None:
                out[i] = _gated(out[i][None], g, p.quantiles.index(0.5),
                                _gate_anchors(heads[i], len(p.horizons)))[0]
        if self._offsets is not None:
            given = offsets or {}
            out = _apply_offsets(out, np.stack([
                given[r[0]] if given.get(r[0]) is not None else self._series_offsets.get(r[0], self._offsets)
                for r in rows]))
        K = np.asarray(p.horizons, dtype=float)
        result: dict[str, Forecast] = {}
        for i, (key, ts, ahead, base, scale) in enumerate(rows):
            at_k = base + scale * np.sinh(out[i])  # (K, Q) values
            vals = np.stack([np.interp(ahead, K, at_k[:, j]) for j in range(at_k.shape[1])], axis=-1)
            vals = np.maximum(vals, 0.0)
            lv = _levels_at(vals, p.quantiles, levels + [0.5])
            result[key] = Forecast(made_at=start, timestamps=ts, point=lv[0.5],
                                   quantiles={q: lv[q] for q in levels}, model=self.name,
                                   model_version=self.version)
        return result

    # -------------------------------------------------------------- persistence
    def _checkpoint(self) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "kind": "levelfree", "params": self.params.model_dump_json(),
                "metrics": self.metrics, "digest": self._digest,
                "offsets": None if self._offsets is None else self._offsets.tolist(),
                "series_offsets": {k: v.tolist() for k, v in self._series_offsets.items()},
                "series_gates": {k: v.tolist() for k, v in self._series_gates.items()},
                "state_dict": {k: v.detach().cpu() for k, v in self._net.state_dict().items()}}

    def save(self, path: str | Path) -> None:
        if self._net is None:
            raise ForecastError("lstm global: save() before fit()")
        Path(path).write_bytes(_dump(self._checkpoint()))

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> "LevelFreeLSTM":
        ck = _read_checkpoint(path)
        if ck.get("kind") != "levelfree":
            held = {"global": "a multi-series", "single": "a per-target"}.get(ck.get("kind"), f"a {ck.get('kind')}")
            raise ForecastError(f"{path} holds {held} lstm model, not a level-free global one (lstm_global): "
                                "train one with forescale train-global --model lstm_global, or use this one "
                                "as forecaster: {name: lstm, init_from: ...}")
        return cls._from_checkpoint(ck, device)

    @classmethod
    def _from_checkpoint(cls, ck: dict[str, Any], device: str | None = None) -> "LevelFreeLSTM":
        # a file saved before a setting existed was trained without it
        saved = json.loads(ck["params"])
        params = LevelFreeParams.model_validate({**_LEVELFREE_BEFORE, "calibration_stride": saved.get("origin_stride", 3),
                                                 **saved})
        if device is not None:
            params = params.model_copy(update={"device": device})
        self = cls(params)
        self.metrics = dict(ck["metrics"])
        self._digest = ck["digest"]
        self._offsets = None if ck["offsets"] is None else np.asarray(ck["offsets"])
        self._series_offsets = {k: np.asarray(v) for k, v in ck["series_offsets"].items()}
        self._series_gates = {k: np.asarray(v) for k, v in ck.get("series_gates", {}).items()}
        net = _build_levelfree_net(params)
        net.load_state_dict(ck["state_dict"])
        self._device = _resolve_device(params.device)
        self._net = net.to(self._device).eval()
        return self

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__) if self._net is None else {"_ckpt": _dump(self._checkpoint())}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "_ckpt" not in state:
            self.__dict__.update(state)
            return
        ck = _torch().load(io.BytesIO(state["_ckpt"]), map_location="cpu", weights_only=True)
        self.__dict__.update(self._from_checkpoint(ck).__dict__)


#: level-free models loaded from a checkpoint, shared by every forecaster
#: that starts from that file without fine-tuning (read-only once loaded):
#: (resolved path, mtime_ns, size, device) -> model
_SHARED: dict[tuple[str, int, int, str], LevelFreeLSTM] = {}
_SHARED_LOCK = threading.Lock()


def shared_levelfree(checkpoint: str | Path, device: str = "auto") -> LevelFreeLSTM:
    """The one in-memory copy of a saved level-free model per file (and
    device): 10,000 targets on one checkpoint hold one network, not 10,000.
    A file replaced on disk (another mtime or size) is loaded afresh."""
    path = Path(checkpoint).resolve()
    try:
        st = path.stat()
    except OSError as exc:
        raise ForecastError(f"lstm global: cannot read the checkpoint {path}: {exc.strerror}") from None
    key = (str(path), st.st_mtime_ns, st.st_size, device)
    with _SHARED_LOCK:
        model = _SHARED.get(key)
        if model is None:
            for old in [k for k in _SHARED if k[0] == key[0] and k[3] == device]:
                del _SHARED[old]  # an older version of the same file
            model = _SHARED[key] = LevelFreeLSTM.load(path, device=device)
        return model


class LevelFreeForecaster(BaseForecaster):
    """The level-free global LSTM in the per-target forecaster contract
    (registry name ``lstm_global``). With ``checkpoint`` it starts from a
    saved :class:`LevelFreeLSTM`: zero-shot on the one in-memory copy shared
    by every target on that file (:func:`shared_levelfree`), or fine-tuned
    for ``finetune_epochs`` on the target (a copy of its own); without, it
    trains the same network on the target's own history (per-series mode).
    Either way ``fit`` calibrates the quantiles on the target's own recent
    errors (offsets kept by this forecaster). :meth:`predict_batch`
    forecasts many targets that share a model in one batched call."""

    name = "lstm_global"
    Params = LevelFreeParams
    capabilities = Capabilities(predicts_in_batches=True)
    #: the key of this forecaster's series in the model's batched calls
    _KEY = "target"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model: LevelFreeLSTM | None = None
        #: this target's conformal offsets (None: the model's pooled ones)
        self.offsets: np.ndarray | None = None
        #: this target's median gate per head horizon (``median_gate``; None: none)
        self.gate: np.ndarray | None = None

    @property
    def min_history(self) -> int:
        return self.params.lookback + 2 * max(self.params.horizons[0], 1) + 1

    @property
    def shares_model(self) -> bool:
        """Zero-shot on a checkpoint: the model is the shared copy."""
        return bool(self.params.checkpoint) and not self.params.finetune_epochs

    def _fit(self, history: Series) -> None:
        p = self.params
        if self.shares_model:
            model = shared_levelfree(p.checkpoint, p.device)  # type: ignore[arg-type]
        elif p.checkpoint:
            model = LevelFreeLSTM.load(p.checkpoint, device=p.device).finetune({self._KEY: history},
                                                                                p.finetune_epochs)
        else:
            model = LevelFreeLSTM(p).fit({self._KEY: history})
        # this target's params decide its own calibration (a shared
        # checkpoint's are the training run's): ``calibrate: false`` keeps
        # the offsets pooled in training
        gates: dict[str, np.ndarray] = {}
        own = (model.calibration_offsets({self._KEY: history}, median=p.calibrate_median,
                                         median_gate=p.median_gate, gate_anchors=p.gate_anchors,
                                         gates=gates) if p.calibrate else {})
        self.offsets, self.gate = own.get(self._KEY), gates.get(self._KEY)
        self.model = model

    def predict(self, start: datetime, horizon: int, quantiles: Sequence[float] = (0.5, 0.9)) -> Forecast:
        out = self.predict_batch([self], start, horizon, quantiles)[0]
        if isinstance(out, ForecastError):
            raise out
        return out

    @classmethod
    def predict_batch(cls, members: Sequence["LevelFreeForecaster"], start: datetime, horizon: int,
                      quantiles: Sequence[float] = (0.5, 0.9)) -> list[Forecast | ForecastError]:
        """Forecast every fitted member at ``start``: one batched
        ``predict_many`` per model (one for all the members that share a
        checkpoint), each member with its own history and offsets. Returns a
        Forecast or the ForecastError of that member, in order; one member's
        error never touches another's forecast."""
        out: list[Forecast | ForecastError | None] = [None] * len(members)
        groups: dict[int, list[int]] = {}
        for i, f in enumerate(members):
            if f.model is None or f._history is None:
                out[i] = ForecastError(f"{cls.name}: predict() before fit()")
            else:
                groups.setdefault(id(f.model), []).append(i)
        for idx in groups.values():
            model = members[idx[0]].model
            assert model is not None
            errors: dict[str, str] = {}
            keys = {str(i): members[i] for i in idx}
            fcs = model.predict_many({k: f._history for k, f in keys.items()}, start, horizon, quantiles,  # type: ignore[misc]
                                     errors=errors, offsets={k: f.offsets for k, f in keys.items()},
                                     gates={k: f.gate for k, f in keys.items()})
            for k, f in keys.items():
                if k in fcs:
                    out[int(k)] = dataclasses.replace(fcs[k], model=cls.name, model_version=f.version)
                else:
                    out[int(k)] = ForecastError(errors.get(k, f"{cls.name}: no forecast"))
        return out  # type: ignore[return-value]

    # a shared model is not this forecaster's to save: a checkpoint of it
    # names the file (re-attached on load) and keeps only its own offsets
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.shares_model:
            state["model"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"gate": None, **state})  # saved before the median gate: none
        if self.model is None and self.shares_model and self._history is not None:
            self.model = shared_levelfree(self.params.checkpoint, self.params.device)  # type: ignore[arg-type]


__all__ = ["GlobalLSTM", "LSTMForecaster", "LSTMParams", "LevelFreeForecaster", "LevelFreeLSTM", "LevelFreeParams",
           "RobustScaler", "build_features", "levelfree_features", "shared_levelfree"]
