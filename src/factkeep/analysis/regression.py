"""Logistic regression with standard errors, in numpy: which measures predict forgetting.

:func:`logistic_regression` fits ``P(y = 1) = sigmoid(b0 + X @ b)`` by Newton's method (iteratively
reweighted least squares) with a small ridge penalty on ``b`` (not on the intercept), which keeps
every step finite when the classes are (nearly) separable. Columns are standardised for the fit
and the estimates reported on the original scale, with Wald standard errors from the inverse of the
(penalised) Hessian, 95% confidence intervals and two-sided p-values (normal approximation).
Constant columns, and columns that are linear combinations of earlier ones, are dropped with a
warning and listed in :attr:`RegressionResult.dropped`.

Example::

    result = logistic_regression(X, y, ["max_key_cosine", "token_overlap"])
    print(result.format_table())
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["Coefficient", "RegressionResult", "logistic_regression"]

log = logging.getLogger(__name__)

INTERCEPT = "(intercept)"
_Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


@dataclass
class Coefficient:
    """One coefficient of a fitted logistic regression (log-odds per unit of the column).

    Attributes:
        name: the column name (``(intercept)`` for the intercept).
        estimate: the coefficient on the column's original scale.
        std_error: its Wald standard error.
        ci_low: lower end of the 95% confidence interval.
        ci_high: upper end of the 95% confidence interval.
        z: ``estimate / std_error``.
        p_value: two-sided p-value of ``z`` (normal approximation).
        standardized: log-odds per standard deviation of the column (the intercept: at the means).
    """

    name: str
    estimate: float
    std_error: float
    ci_low: float
    ci_high: float
    z: float
    p_value: float
    standardized: float


@dataclass
class RegressionResult:
    """A fitted logistic regression.

    Attributes:
        coefficients: the intercept first, then the kept columns in input order.
        n: number of observations.
        n_positive: observations with ``y = 1``.
        log_likelihood: the (unpenalised) log-likelihood at the estimate.
        converged: whether Newton's method met its tolerance.
        iterations: Newton steps taken.
        dropped: ``{column: reason}`` for columns left out of the fit.
        l2: the ridge penalty used (on the standardised scale when ``standardize``).
    """

    coefficients: list[Coefficient]
    n: int
    n_positive: int
    log_likelihood: float
    converged: bool
    iterations: int
    dropped: dict[str, str] = field(default_factory=dict)
    l2: float = 0.0

    def coefficient(self, name: str) -> Coefficient:
        """The coefficient named ``name`` (KeyError if it was dropped or never given)."""
        for coef in self.coefficients:
            if coef.name == name:
                return coef
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite numbers become None)."""

        def clean(value: Any) -> Any:
            return value if not isinstance(value, float) or math.isfinite(value) else None

        out = asdict(self)
        out["coefficients"] = [{k: clean(v) for k, v in c.items()} for c in out["coefficients"]]
        out["log_likelihood"] = clean(out["log_likelihood"])
        return out

    def format_table(self) -> str:
        """A plain-text coefficient table, with the fit's size and convergence below it."""
        width = max(12, *(len(c.name) for c in self.coefficients))
        head = (
            f"{'term':<{width}} {'estimate':>10} {'std.err':>9} {'95% CI':>21} "
            f"{'z':>7} {'p':>9} {'per sd':>8}"
        )
        lines = [head, "-" * len(head)]
        for c in self.coefficients:
            ci = f"[{c.ci_low:.3g}, {c.ci_high:.3g}]"
            lines.append(
                f"{c.name:<{width}} {c.estimate:>10.4g} {c.std_error:>9.3g} {ci:>21} "
                f"{c.z:>7.2f} {c.p_value:>9.2g} {c.standardized:>8.3f}"
            )
        status = "converged" if self.converged else "NOT converged"
        lines.append(
            f"n = {self.n} ({self.n_positive} positive), log-likelihood {self.log_likelihood:.2f}, "
            f"{status} in {self.iterations} Newton steps"
        )
        for name, reason in self.dropped.items():
            lines.append(f"dropped {name}: {reason}")
        return "\n".join(lines)


def _independent_columns(X: np.ndarray, names: Sequence[str]) -> tuple[list[int], dict[str, str]]:
    """Indices of columns that are neither constant nor in the span of earlier kept columns."""
    centered = X - X.mean(axis=0)  # removes the intercept's direction
    basis: list[np.ndarray] = []
    keep: list[int] = []
    dropped: dict[str, str] = {}
    for j, name in enumerate(names):
        col = centered[:, j]
        norm = float(np.linalg.norm(col))
        if float(col.std()) <= 1e-10 * max(1.0, float(np.abs(X[:, j]).max(initial=0.0))):
            dropped[name] = "constant column"
            continue
        resid = col.copy()
        for q in basis:
            resid -= q * float(q @ resid)
        if float(np.linalg.norm(resid)) <= 1e-8 * norm:
            dropped[name] = "a linear combination of earlier columns and the intercept"
            continue
        basis.append(resid / float(np.linalg.norm(resid)))
        keep.append(j)
    return keep, dropped


def _sigmoid(eta: np.ndarray) -> np.ndarray:
    """The logistic function, without overflow."""
    return 0.5 * (1.0 + np.tanh(0.5 * eta))  # no overflow for large |eta|


def _log_likelihood(eta: np.ndarray, y: np.ndarray) -> float:
    """The Bernoulli log-likelihood of ``y`` at log-odds ``eta``."""
    return float(np.sum(y * eta - np.logaddexp(0.0, eta)))


def _checked(X: np.ndarray, y: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``X`` and ``y`` as float arrays, checked.

    Raises:
        ValueError: shapes disagree, ``y`` is not 0/1 or has a single class, a value is not
            finite, or ``n == 0``.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0] or X.shape[1] != len(names):
        raise ValueError(f"shapes disagree: X {X.shape}, y {y.shape}, {len(names)} names")
    if X.shape[0] == 0:
        raise ValueError("no observations")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y must hold only 0 and 1")
    if not np.isfinite(X).all():
        raise ValueError("X holds a non-finite value")
    if y.min() == y.max():
        raise ValueError(f"y has a single class (all {int(y[0])}): nothing to regress")
    return X, y


def _hessian(Z: np.ndarray, p: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """The negative Hessian of the penalised log-likelihood at fitted probabilities ``p``."""
    return (Z * (p * (1 - p))[:, None]).T @ Z + np.diag(penalty)


def _newton(
    Z: np.ndarray, y: np.ndarray, penalty: np.ndarray, max_iter: int, tol: float
) -> tuple[np.ndarray, bool, int]:
    """Maximise the penalised log-likelihood by Newton's method with step halving, from the
    base rate; returns (parameters, converged, Newton steps taken)."""
    theta = np.zeros(Z.shape[1])
    rate = min(max(y.mean(), 1e-6), 1 - 1e-6)
    theta[0] = math.log(rate / (1 - rate))

    def objective(t: np.ndarray) -> float:
        return _log_likelihood(Z @ t, y) - 0.5 * float(np.sum(penalty * t * t))

    converged, iterations, current = False, 0, objective(theta)
    for number in range(1, max_iter + 1):
        iterations = number
        p = _sigmoid(Z @ theta)
        grad = Z.T @ (y - p) - penalty * theta
        step = np.linalg.lstsq(_hessian(Z, p, penalty), grad, rcond=None)[0]
        size = 1.0
        while size > 1e-10:  # step halving: never decrease the penalised likelihood
            candidate = theta + size * step
            value = objective(candidate)
            if value >= current - 1e-12:
                break
            size /= 2
        theta, current = candidate, value
        if float(np.abs(size * step).max()) < tol:
            converged = True
            break
    return theta, converged, iterations


def _coefficients(
    names: Sequence[str], estimate: np.ndarray, cov: np.ndarray, per_sd: np.ndarray
) -> list[Coefficient]:
    """The :class:`Coefficient` of each name (the intercept first), with Wald statistics."""
    coefficients = []
    for i, name in enumerate(names):
        se = math.sqrt(max(float(cov[i, i]), 0.0))
        z = float(estimate[i]) / se if se > 0 else math.inf
        coefficients.append(
            Coefficient(
                name=name,
                estimate=float(estimate[i]),
                std_error=se,
                ci_low=float(estimate[i]) - _Z95 * se,
                ci_high=float(estimate[i]) + _Z95 * se,
                z=z,
                p_value=math.erfc(abs(z) / math.sqrt(2.0)),
                standardized=float(per_sd[i]),
            )
        )
    return coefficients


def logistic_regression(
    X: np.ndarray,
    y: np.ndarray,
    names: Sequence[str],
    l2: float = 1e-6,
    standardize: bool = True,
    max_iter: int = 100,
    tol: float = 1e-8,
) -> RegressionResult:
    """Fit a logistic regression with an intercept by Newton's method (IRLS).

    Args:
        X: ``(n, k)`` predictors (no intercept column).
        y: ``(n,)`` outcomes in {0, 1}.
        names: the ``k`` column names.
        l2: ridge penalty ``l2/2 * ||b||^2`` on the slopes (not the intercept); it keeps Newton's
            steps finite under perfect separation.
        standardize: fit on z-scored columns (better conditioned); estimates are reported on the
            original scale either way.
        max_iter: the most Newton steps.
        tol: stop when the largest parameter change is below this.

    Returns:
        The :class:`RegressionResult`.

    Raises:
        ValueError: shapes disagree, ``y`` is not 0/1, a value is not finite, or ``n == 0``.
    """
    X, y = _checked(X, y, names)
    keep, dropped = _independent_columns(X, list(names))
    for name, reason in dropped.items():
        log.warning("regression: dropping %s (%s)", name, reason)
    kept_names = [names[j] for j in keep]
    Xk = X[:, keep]
    mean = Xk.mean(axis=0) if standardize else np.zeros(len(keep))
    scale = Xk.std(axis=0) if standardize else np.ones(len(keep))
    Z = np.column_stack([np.ones(len(y)), (Xk - mean) / scale])  # (n, 1 + k)
    penalty = np.full(Z.shape[1], l2)
    penalty[0] = 0.0
    theta, converged, iterations = _newton(Z, y, penalty, max_iter, tol)
    cov_std = np.linalg.pinv(_hessian(Z, _sigmoid(Z @ theta), penalty))
    if not converged:
        log.warning("regression: Newton's method did not converge in %d steps", max_iter)
    # Back to the original scale: b_j = s_j / sd_j, b0 = s_0 - sum(s_j * mean_j / sd_j).
    transform = np.eye(Z.shape[1])
    transform[1:, 1:] = np.diag(1.0 / scale)
    transform[0, 1:] = -mean / scale
    estimate = transform @ theta
    cov = transform @ cov_std @ transform.T
    per_sd = np.concatenate(
        [[estimate[0] + estimate[1:] @ Xk.mean(axis=0)], estimate[1:] * Xk.std(axis=0)]
    )
    if float(np.abs(per_sd[1:]).max(initial=0.0)) > 15:
        log.warning("regression: very large coefficients, the outcome may be separable")
    return RegressionResult(
        coefficients=_coefficients([INTERCEPT, *kept_names], estimate, cov, per_sd),
        n=len(y),
        n_positive=int(y.sum()),
        log_likelihood=_log_likelihood(Z @ theta, y),
        converged=converged,
        iterations=iterations,
        dropped=dropped,
        l2=l2,
    )
