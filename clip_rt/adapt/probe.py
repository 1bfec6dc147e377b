"""The few-shot head, in numpy: a multinomial logistic regression (linear probe) on frozen image
embeddings, optionally blended with the zero-shot classifier, with both the L2 strength and
the blend weight chosen by stratified k-fold cross-validation.

- Features are centred and scaled by one number (the root-mean-square distance to the mean,
  per dimension), fitted on the training images only: a random or narrow embedding space
  (all images within a few degrees of each other) then trains as well as a spread-out one,
  and the L2 penalty stays rotation-invariant. The centring and scale are folded into the
  weights at the end, so a head is just ``x @ W + b``.
- The loss is ``C * sum(cross-entropy) + ||W||^2 / 2`` (scikit-learn's convention for ``C``),
  minimised by L-BFGS with a backtracking line search; the bias is not penalised.
- Blend: ``p = (1 - w) * p_zero_shot + w * p_probe``, both softmax probabilities. ``w = 0``
  (pure zero-shot) and ``w = 1`` (pure probe) are among the candidates, so on the training
  folds the chosen head is never worse than zero-shot.
- Selection: the highest out-of-fold accuracy; ties broken by the lower log-loss, then by the
  smaller blend weight and the stronger penalty (the simpler head).

Everything is deterministic given the seed (which only shuffles the folds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from ..errors import InputError

C_GRID: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
BLEND_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
DEFAULT_FOLDS = 5
MAX_ITER = 500
GRAD_TOL = 1e-6


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def zero_shot_probabilities(x: np.ndarray, class_embeddings: np.ndarray, logit_scale: float) -> np.ndarray:
    """Softmax of ``logit_scale * cos`` over the classes: the zero-shot part of a head (a
    distribution over the labels whatever the bundle's scoring, so that it can be blended)."""
    return softmax(float(logit_scale) * (normalise(x) @ normalise(class_embeddings).T))


# -- the optimiser -----------------------------------------------------------------------------------
def lbfgs(
    fun: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x0: np.ndarray,
    *,
    max_iter: int = MAX_ITER,
    tol: float = GRAD_TOL,
    memory: int = 10,
) -> np.ndarray:
    """Minimise a smooth convex *fun* (value, gradient) from *x0*: limited-memory BFGS, the
    two-loop recursion, Armijo backtracking. Stops when the largest gradient entry is below
    *tol*, the value stops changing, or after *max_iter* iterations."""
    x = x0.astype(np.float64, copy=True)
    f, g = fun(x)
    steps: list[tuple[np.ndarray, np.ndarray, float]] = []
    for _ in range(max_iter):
        if not np.isfinite(f) or np.max(np.abs(g)) < tol:
            break
        q = g.copy()
        alphas = []
        for s, y, rho in reversed(steps):
            a = rho * float(s @ q)
            q -= a * y
            alphas.append(a)
        if steps:
            s, y, _ = steps[-1]
            q *= float(s @ y) / float(y @ y)
        else:
            q /= max(1.0, float(np.linalg.norm(g)))
        for (s, y, rho), a in zip(steps, reversed(alphas)):
            q += s * (a - rho * float(y @ q))
        d = -q
        slope = float(g @ d)
        if slope >= 0:  # not a descent direction (numerical trouble): restart from the gradient
            steps.clear()
            d, slope = -g, -float(g @ g)
        t = 1.0
        while True:
            x_new = x + t * d
            f_new, g_new = fun(x_new)
            if f_new <= f + 1e-4 * t * slope:
                break
            t *= 0.5
            if t < 1e-12:
                return x
        s, y = x_new - x, g_new - g
        sy = float(s @ y)
        if sy > 1e-12 * float(y @ y):
            steps.append((s, y, 1.0 / sy))
            if len(steps) > memory:
                steps.pop(0)
        done = abs(f - f_new) <= 1e-12 * max(1.0, abs(f))
        x, f, g = x_new, f_new, g_new
        if done:
            break
    return x


@dataclass(frozen=True)
class Scaling:
    """Centring and one scale, fitted on training features."""

    mean: np.ndarray
    scale: float

    @classmethod
    def fit(cls, x: np.ndarray) -> Scaling:
        mean = x.mean(axis=0)
        rms = float(np.sqrt(np.mean((x - mean) ** 2)))
        return cls(mean, rms if rms > 1e-12 else 1.0)

    def apply(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.scale


def fit_logistic(
    x: np.ndarray, y: np.ndarray, n_classes: int, c: float, init: Optional[np.ndarray] = None
) -> np.ndarray:
    """Parameters ``(D + 1, C)`` (weights, then the bias row) of the multinomial logistic
    regression of *y* on scaled features *x* with ``C = c``."""
    n, d = x.shape
    onehot = np.zeros((n, n_classes))
    onehot[np.arange(n), y] = 1.0
    penalty = 1.0 / (c * n)  # the loss divided by C * n: mean cross-entropy + penalty / 2 * ||W||^2

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = theta[: d * n_classes].reshape(d, n_classes)
        b = theta[d * n_classes :]
        logits = x @ w + b
        top = logits.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        loss = float(np.mean(log_norm - logits[np.arange(n), y])) + 0.5 * penalty * float(np.sum(w * w))
        diff = (np.exp(logits - log_norm[:, None]) - onehot) / n
        grad_w = x.T @ diff + penalty * w
        return loss, np.concatenate([grad_w.ravel(), diff.sum(axis=0)])

    theta0 = np.zeros(d * n_classes + n_classes) if init is None else init.ravel()
    theta = lbfgs(fun, theta0)
    return theta.reshape(d + 1, n_classes)


def probe_probabilities(x: np.ndarray, params: np.ndarray) -> np.ndarray:
    return softmax(x @ params[:-1] + params[-1])


# -- cross-validation ---------------------------------------------------------------------------------
def stratified_folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The fold (0..k-1) of each image: each class's images shuffled with *seed* and dealt out in
    turn, so every fold holds each class in proportion (classes with at least k images)."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    offset = 0
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        rng.shuffle(members)
        fold[members] = (np.arange(len(members)) + offset) % k
        offset += len(members)  # the next class starts where this one ended: folds stay even in size
    return fold


@dataclass(frozen=True)
class Candidate:
    c: float
    blend: float
    accuracy: float
    log_loss: float


@dataclass
class CrossValidation:
    """Out-of-fold results of every (C, blend) candidate, and the chosen one."""

    folds: int
    seed: int
    chosen: Candidate
    best_probe: Candidate  # the best with blend 1 (the probe alone)
    zero_shot_correct: np.ndarray  # per image
    head_correct: np.ndarray  # per image, out of fold, for the chosen candidate
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def zero_shot_accuracy(self) -> float:
        return float(self.zero_shot_correct.mean())


def _log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.maximum(probs[np.arange(len(y)), y], 1e-15))))


def _rank(cand: Candidate) -> tuple[float, float, float, float]:
    # Higher accuracy, then lower log-loss, then less probe, then a stronger penalty.
    return (-cand.accuracy, round(cand.log_loss, 12), cand.blend, cand.c)


def cross_validate(
    x: np.ndarray,
    y: np.ndarray,
    zero_shot: np.ndarray,
    n_classes: int,
    *,
    folds: int,
    seed: int,
    c_grid: Sequence[float] = C_GRID,
    blend_grid: Sequence[float] = BLEND_GRID,
) -> CrossValidation:
    """*x* (N, D) embeddings, *y* (N,) classes, *zero_shot* (N, C) zero-shot probabilities."""
    fold = stratified_folds(y, folds, seed)
    grid = sorted({float(c) for c in c_grid})
    oof = {c: np.zeros((len(y), n_classes)) for c in grid}
    for f in range(folds):
        train, held = fold != f, fold == f
        scaling = Scaling.fit(x[train])
        xt, xh = scaling.apply(x[train]), scaling.apply(x[held])
        params = None
        for c in grid:  # strongest penalty first; each fit starts from the previous one
            params = fit_logistic(xt, y[train], n_classes, c, init=params)
            oof[c][held] = probe_probabilities(xh, params)
    candidates = []
    best_for: dict[tuple[float, float], np.ndarray] = {}
    for c in grid:
        for w in sorted({float(b) for b in blend_grid}):
            probs = (1.0 - w) * zero_shot + w * oof[c]
            pred = np.argmax(probs, axis=1)
            candidates.append(Candidate(c, w, float(np.mean(pred == y)), _log_loss(probs, y)))
            best_for[(c, w)] = pred == y
    chosen = min(candidates, key=_rank)
    probes = [cand for cand in candidates if cand.blend == 1.0]
    best_probe = min(probes, key=_rank) if probes else chosen
    return CrossValidation(
        folds,
        seed,
        chosen,
        best_probe,
        np.argmax(zero_shot, axis=1) == y,
        best_for[(chosen.c, chosen.blend)],
        candidates,
    )


def check_trainable(counts: dict[str, int], folds: int) -> int:
    """The folds to use: *folds*, or fewer where the smallest class has fewer images (at least
    2 per class are needed: one to train on, one to hold out)."""
    if folds < 2:
        raise InputError(f"folds must be at least 2, got {folds}")
    small = {lab: n for lab, n in counts.items() if n < 2}
    if small:
        shown = ", ".join(f"{lab!r} ({n})" for lab, n in list(small.items())[:5])
        raise InputError(
            f"fitting a head needs at least 2 readable images per class for cross-validation; too few in: {shown}"
        )
    return min(folds, min(counts.values()))


@dataclass(frozen=True)
class Fitted:
    """The final probe on all images, folded into ``x @ weight + bias`` for normalised
    embeddings *x*."""

    weight: np.ndarray  # (D, C)
    bias: np.ndarray  # (C,)


def fit_final(x: np.ndarray, y: np.ndarray, n_classes: int, c: float) -> Fitted:
    scaling = Scaling.fit(x)
    params = fit_logistic(scaling.apply(x), y, n_classes, c)
    w = params[:-1] / scaling.scale
    b = params[-1] - scaling.mean @ w
    return Fitted(w.astype(np.float32), b.astype(np.float32))
