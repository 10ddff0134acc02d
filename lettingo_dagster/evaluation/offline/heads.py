"""The offline recommender's heads: a linear model over standardized features per task.

Multinomial logistic regression for `sentiment`; for `ranking` a listwise softmax over each
target's candidates (conditional logit, L2-penalized; `ranking_head="pointwise"` is a plain
target-vs-negative logistic regression). Predictions are plain numpy, so a head saves as arrays,
never a pickle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class _Head:
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (classes, features) for sentiment, (1, features) for ranking
    intercept: np.ndarray

    def logits(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.coef.T + self.intercept


def _fit_head(
    x: np.ndarray, y: np.ndarray, c: float, seed: int, weights: np.ndarray | None = None
) -> _Head:
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0
    model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    model.fit((x - mean) / scale, y, sample_weight=weights)
    return _Head(mean, scale, model.coef_.astype(np.float64), model.intercept_.astype(np.float64))


def _fit_listwise(x: np.ndarray, sizes: np.ndarray, c: float) -> _Head:
    """Conditional logit: a softmax over each group's candidates (the first row of a group is
    its target), L2-penalized like sklearn's LogisticRegression (C times the summed loss plus
    half the squared weights)."""
    from scipy.optimize import minimize

    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0
    xs = ((x - mean) / scale).astype(np.float64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    group = np.repeat(np.arange(len(sizes)), sizes)
    target = np.zeros(len(xs))
    target[starts] = 1.0

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = xs @ w
        top = np.maximum.reduceat(z, starts)
        e = np.exp(z - top[group])
        total = np.add.reduceat(e, starts)
        loss = float(np.sum(np.log(total) + top - z[starts]))
        p = e / total[group]
        grad = xs.T @ (p - target)
        return c * loss + 0.5 * float(w @ w), c * grad + w

    result = minimize(
        objective, np.zeros(xs.shape[1]), jac=True, method="L-BFGS-B", options={"maxiter": 500}
    )
    return _Head(mean, scale, result.x[None, :], np.zeros(1))
