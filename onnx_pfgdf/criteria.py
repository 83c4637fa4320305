"""Filter-importance criteria: PFGDF's Gaussian interval and the baselines.

Every criterion maps one layer's weights, reshaped to a matrix ``W`` of shape
``[M, K]`` (one row per output filter: a Conv weight ``[M, C/g, kH, kW]``
becomes ``[M, C/g*kH*kW]``; a Gemm passes its output units as rows), to a
:class:`LayerScore` whose ``importance[i]`` is *higher for filters more worth
keeping*.  The caller does the reshaping; this module never sees ONNX.

Criteria (the registry :data:`CRITERIA`):

==========  ==================================================================
``l1``      ``||w_i||_1`` (Li et al. 2017).
``l2``      ``||w_i||_2``.
``fpgm``    ``sum_j ||w_i - w_j||_2`` (He et al. 2019): filters close to the
            geometric median of the layer are replaceable by the others.
``random``  ``U[0, 1)`` draws from ``np.random.default_rng(config.seed)``.
``pfgdf``   Gaussian-interval criterion, a reconstruction of PFGDF (see
            ``PFGDF.md``): fit ``N(mu, sigma)`` to a statistic of the layer
            and rank filters by where they fall relative to
            ``I(alpha) = [mu - alpha*sigma, mu + alpha*sigma]``.
==========  ==================================================================

PFGDF variants (``config.statistic`` x ``config.side``):

* Per-filter statistics ``s_i`` (``mean``, ``l1`` = mean ``|w|``, ``l2`` =
  RMS ``sqrt(mean w^2)``, ``std`` with ddof=0) are fitted with
  ``N(mu, sigma)`` and standardised, ``z_i = (s_i - mu) / sigma``.
  ``outside`` (reading A, rare filters are pruned): ``importance = -|z|``,
  ``insignificant = |z| > alpha``.  ``inside`` (reading B, typical filters are
  pruned): ``importance = |z|``, ``insignificant = |z| < alpha``.
* ``weights``: ``N(mu, sigma)`` is fitted to *all* raw weights of the layer;
  filter ``i``'s tail mass is ``t_i = mean_j [|w_ij - mu| > a*sigma]`` with
  ``a = alpha`` (``a = 1.0`` in rank mode, ``alpha=None``).  The Gaussian's
  expected tail mass is ``e = 2 * (1 - Phi(a))``.  Here ``side`` names the
  reading, not the geometry of ``t``: ``outside`` is the paper's raw-weight
  rule, a filter whose weights (almost) all lie inside ``I(a)`` carries none
  of the layer's tail and is pruned: ``importance = t``, ``insignificant =
  t <= 0.5 * e``.  ``inside`` is its mirror about ``e``: ``importance = -t``,
  ``insignificant = t >= 1.5 * e``.

Degenerate layers: when the fitted statistic is constant (``sigma == 0``,
which includes every single-filter layer for the per-filter statistics) all
``z_i`` are 0, and for every PFGDF variant *no* filter is insignificant when
``sigma == 0`` or ``M == 1``.  Ties in ``importance`` are broken by
:func:`select_keep`, which prefers the lower filter index.

Example:
    >>> import numpy as np
    >>> w = np.array([[3.0, 0.0], [1.0, 1.0], [0.0, 0.5]])
    >>> score_layer(w, CriterionConfig(name="l1")).importance
    array([3. , 2. , 0.5])
    >>> select_keep(np.array([1.0, 2.0, 2.0, 0.0]), 2)
    array([1, 2])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.spatial.distance import cdist

__all__ = [
    "STATISTICS",
    "SIDES",
    "CriterionConfig",
    "GaussianFit",
    "LayerScore",
    "Criterion",
    "CRITERIA",
    "validate_config",
    "filter_statistics",
    "fit_gaussian",
    "score_layer",
    "score_group",
    "select_keep",
]

STATISTICS: tuple[str, ...] = ("weights", "mean", "l1", "l2", "std")
"""What PFGDF fits its Gaussian to: all raw weights, or one scalar per filter."""

SIDES: tuple[str, ...] = ("outside", "inside")
"""Which side of the interval PFGDF prunes (see the module docstring)."""

_RANK_MODE_SIGMAS = 1.0
"""Interval half-width ``a`` used by the ``weights`` statistic when alpha is None."""

_LOW_TAIL_FACTOR = 0.5
"""``weights``/``outside``: insignificant when ``t_i <= 0.5 * e``."""

_HIGH_TAIL_FACTOR = 1.5
"""``weights``/``inside`` (the mirror about ``e``): insignificant when ``t_i >= 1.5 * e``."""


@dataclass(frozen=True)
class CriterionConfig:
    """How to score a layer.

    Attributes:
        name: Key of :data:`CRITERIA`.
        statistic: PFGDF only; one of :data:`STATISTICS`.
        side: PFGDF only; one of :data:`SIDES`.
        alpha: PFGDF interval half-width in sigmas, ``alpha > 0``.  ``None``
            means rank mode: importance only, no ``insignificant`` mask.
        seed: Seed of the ``random`` criterion.
    """

    name: str = "pfgdf"
    statistic: str = "l1"
    side: str = "outside"
    alpha: float | None = None
    seed: int = 0


@dataclass(frozen=True)
class GaussianFit:
    """Moment fit ``N(mu, sigma)`` of a sample and its Kolmogorov-Smirnov check.

    Attributes:
        mu: Sample mean.
        sigma: Sample standard deviation (ddof=0); exactly 0 for a constant sample.
        ks_statistic: ``D = sup_x |F_n(x) - Phi((x - mu) / sigma)|``.
        ks_pvalue: Two-sided p-value of ``D`` from :func:`scipy.stats.kstest`.
            mu and sigma are estimated from the same sample (the Lilliefors
            situation), so this p-value is conservative: read it as a
            goodness-of-fit figure, not as an exact test.
        n: Sample size.
    """

    mu: float
    sigma: float
    ks_statistic: float
    ks_pvalue: float
    n: int

    def to_dict(self) -> dict[str, float]:
        """Return the fit as plain Python numbers, ready for JSON."""
        return {
            "mu": self.mu,
            "sigma": self.sigma,
            "ks_statistic": self.ks_statistic,
            "ks_pvalue": self.ks_pvalue,
            "n": self.n,
        }


@dataclass(frozen=True, eq=False)
class LayerScore:
    """The score of one layer's ``M`` filters.

    Equality is identity (``eq=False``): the fields are arrays.

    Attributes:
        importance: ``[M]`` float64, higher = more worth keeping.
        insignificant: ``[M]`` bool, the filters PFGDF's interval marks for
            removal; only for ``name == "pfgdf"`` with ``alpha`` set, else None.
        fit: The Gaussian fit of the layer's statistic (``pfgdf`` only), else None.
    """

    importance: np.ndarray
    insignificant: np.ndarray | None = None
    fit: GaussianFit | None = None


Criterion = Callable[[np.ndarray, CriterionConfig], LayerScore]
"""A criterion: ``(weight [M, K], config) -> LayerScore``."""


class _Registry(Mapping[str, Criterion]):
    """Read-only name -> criterion mapping that refuses duplicate keys."""

    def __init__(self) -> None:
        self._items: dict[str, Criterion] = {}

    def register(self, name: str) -> Callable[[Criterion], Criterion]:
        """Return a decorator that adds a criterion under ``name``.

        Raises:
            ValueError: ``name`` is already registered.
        """

        def add(func: Criterion) -> Criterion:
            if name in self._items:
                raise ValueError(f"criterion {name!r} is already registered")
            self._items[name] = func
            return func

        return add

    def __getitem__(self, name: str) -> Criterion:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"CRITERIA({', '.join(self._items)})"


CRITERIA = _Registry()
"""Registry of criteria: ``pfgdf``, ``l1``, ``l2``, ``fpgm``, ``random``."""


def validate_config(config: CriterionConfig) -> None:
    """Check every field of ``config``, whatever the criterion.

    Raises:
        ValueError: unknown name, statistic or side; alpha not a finite
            number > 0; seed not a non-negative integer.
    """
    if config.name not in CRITERIA:
        raise ValueError(f"unknown criterion {config.name!r}; choose one of {sorted(CRITERIA)}")
    if config.statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {config.statistic!r}; choose one of {list(STATISTICS)}")
    if config.side not in SIDES:
        raise ValueError(f"unknown side {config.side!r}; choose one of {list(SIDES)}")
    if config.alpha is not None:
        alpha = config.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)):
            raise ValueError(f"alpha must be a number or None, got {alpha!r}")
        if not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"alpha must be a finite number > 0 (sigmas), got {alpha!r}")
    if isinstance(config.seed, bool) or not isinstance(config.seed, (int, np.integer)) or config.seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {config.seed!r}")


def _as_matrix(weight: np.ndarray) -> np.ndarray:
    """Return ``weight`` as a finite float64 ``[M, K]`` matrix with ``M, K >= 1``."""
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"weight must be a [M, K] matrix (one row per filter), got shape {w.shape}")
    if w.shape[0] == 0 or w.shape[1] == 0:
        raise ValueError(f"weight must have at least one filter and one weight, got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("weight contains NaN or infinite values")
    return w


def _prepare(weight: np.ndarray, config: CriterionConfig) -> np.ndarray:
    validate_config(config)
    return _as_matrix(weight)


_FILTER_STATISTICS: Mapping[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": lambda w: w.mean(axis=1),
    "l1": lambda w: np.abs(w).mean(axis=1),
    "l2": lambda w: np.sqrt(np.square(w).mean(axis=1)),
    "std": lambda w: w.std(axis=1),
}
"""Per-filter statistics; ``weights`` is not here because it is not per filter."""


def filter_statistics(weight: np.ndarray, statistic: str) -> np.ndarray:
    """Compute one scalar per filter.

    ``mean``: ``(1/K) sum_j w_ij``; ``l1``: ``(1/K) sum_j |w_ij|``;
    ``l2``: ``sqrt((1/K) sum_j w_ij^2)`` (RMS, the norm over ``sqrt(K)``);
    ``std``: ``sqrt((1/K) sum_j (w_ij - mean_i)^2)``.  Dividing by ``K`` does
    not change the z-scores within a layer; it keeps the values comparable
    across layers in reports.

    Args:
        weight: ``[M, K]`` matrix, one row per filter.
        statistic: One of :data:`STATISTICS` except ``weights``.

    Returns:
        ``[M]`` float64.

    Raises:
        ValueError: unknown statistic or malformed weight.
    """
    if statistic not in _FILTER_STATISTICS:
        raise ValueError(f"unknown per-filter statistic {statistic!r}; choose one of {sorted(_FILTER_STATISTICS)}")
    return _FILTER_STATISTICS[statistic](_as_matrix(weight))


def fit_gaussian(values: np.ndarray) -> GaussianFit:
    """Fit ``N(mu, sigma)`` by moments and measure the fit with a KS test.

    ``mu = mean(x)``, ``sigma = std(x)`` (ddof=0), and ``D, p`` from
    ``scipy.stats.kstest(x, "norm", args=(mu, sigma))``.  A constant sample
    (``max(x) == min(x)``, including ``n == 1``) gets ``mu = x[0]`` and
    ``sigma = 0`` exactly (not the rounding noise of ``np.std``), with
    ``D = 0`` and ``p = 1``.

    Args:
        values: Sample of any shape; it is flattened.

    Returns:
        The fit.

    Raises:
        ValueError: empty sample or non-finite values.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("cannot fit a Gaussian to an empty sample")
    if not np.all(np.isfinite(x)):
        raise ValueError("cannot fit a Gaussian to NaN or infinite values")
    if np.ptp(x) == 0:
        return GaussianFit(mu=float(x[0]), sigma=0.0, ks_statistic=0.0, ks_pvalue=1.0, n=int(x.size))
    mu, sigma = float(x.mean()), float(x.std())
    result = stats.kstest(x, "norm", args=(mu, sigma))
    return GaussianFit(
        mu=mu,
        sigma=sigma,
        ks_statistic=float(result.statistic),
        ks_pvalue=float(result.pvalue),
        n=int(x.size),
    )


def _standardise(values: np.ndarray, fit: GaussianFit) -> np.ndarray:
    """``z = (x - mu) / sigma``, or zeros when ``sigma == 0``."""
    if fit.sigma == 0:
        return np.zeros_like(values)
    return (values - fit.mu) / fit.sigma


def _pfgdf_filter_statistic(w: np.ndarray, config: CriterionConfig) -> LayerScore:
    """PFGDF on a per-filter statistic: ``importance = -|z|`` (outside) or ``|z|`` (inside)."""
    s = _FILTER_STATISTICS[config.statistic](w)
    fit = fit_gaussian(s)
    dist = np.abs(_standardise(s, fit))
    outside = config.side == "outside"
    importance = -dist if outside else dist
    insignificant = None
    if config.alpha is not None:
        if fit.sigma == 0 or w.shape[0] == 1:
            insignificant = np.zeros(w.shape[0], dtype=bool)
        else:
            insignificant = dist > config.alpha if outside else dist < config.alpha
    # "+ 0.0" turns the -0.0 of a zero distance into 0.0 for clean reports.
    return LayerScore(importance=importance + 0.0, insignificant=insignificant, fit=fit)


def _pfgdf_raw_weights(w: np.ndarray, config: CriterionConfig) -> LayerScore:
    """PFGDF on all raw weights: importance is the filter's tail mass ``t_i`` (or ``-t_i``)."""
    fit = fit_gaussian(w)
    a = _RANK_MODE_SIGMAS if config.alpha is None else float(config.alpha)
    tail = np.abs(w - fit.mu) > a * fit.sigma
    t = tail.mean(axis=1)
    outside = config.side == "outside"
    importance = t if outside else -t
    insignificant = None
    if config.alpha is not None:
        if fit.sigma == 0 or w.shape[0] == 1:
            insignificant = np.zeros(w.shape[0], dtype=bool)
        else:
            expected = 2.0 * float(stats.norm.sf(a))
            if outside:
                insignificant = t <= _LOW_TAIL_FACTOR * expected
            else:
                insignificant = t >= _HIGH_TAIL_FACTOR * expected
    return LayerScore(importance=importance + 0.0, insignificant=insignificant, fit=fit)


@CRITERIA.register("pfgdf")
def pfgdf(weight: np.ndarray, config: CriterionConfig) -> LayerScore:
    """PFGDF Gaussian-interval criterion (reconstruction; see the module docstring).

    Args:
        weight: ``[M, K]`` matrix, one row per filter.
        config: Uses ``statistic``, ``side`` and ``alpha``.

    Returns:
        Importance, the insignificant mask when ``alpha`` is set, and the fit.
    """
    w = _prepare(weight, config)
    if config.statistic == "weights":
        return _pfgdf_raw_weights(w, config)
    return _pfgdf_filter_statistic(w, config)


@CRITERIA.register("l1")
def l1_norm(weight: np.ndarray, config: CriterionConfig) -> LayerScore:
    """``importance_i = sum_j |w_ij|`` (Li et al. 2017)."""
    w = _prepare(weight, config)
    return LayerScore(importance=np.abs(w).sum(axis=1))


@CRITERIA.register("l2")
def l2_norm(weight: np.ndarray, config: CriterionConfig) -> LayerScore:
    """``importance_i = sqrt(sum_j w_ij^2)``."""
    w = _prepare(weight, config)
    return LayerScore(importance=np.sqrt(np.square(w).sum(axis=1)))


@CRITERIA.register("fpgm")
def fpgm(weight: np.ndarray, config: CriterionConfig) -> LayerScore:
    """``importance_i = sum_j ||w_i - w_j||_2`` (He et al. 2019, geometric median).

    The filter minimising this sum is the layer's sample geometric median,
    the one best represented by the others, hence the least important.
    Cost: ``O(M^2 K)`` time, ``O(M^2)`` memory.
    """
    w = _prepare(weight, config)
    return LayerScore(importance=cdist(w, w, metric="euclidean").sum(axis=1))


@CRITERIA.register("random")
def random_scores(weight: np.ndarray, config: CriterionConfig) -> LayerScore:
    """``importance_i ~ U[0, 1)`` from ``np.random.default_rng(config.seed)``.

    The draw depends only on ``seed`` and ``M``: two layers with the same
    number of filters get the same scores for the same seed.
    """
    w = _prepare(weight, config)
    return LayerScore(importance=np.random.default_rng(config.seed).random(w.shape[0]))


def score_layer(weight: np.ndarray, config: CriterionConfig) -> LayerScore:
    """Score one layer's filters with the criterion ``config.name``.

    Args:
        weight: ``[M, K]`` float matrix, one row per filter.
        config: The criterion and its options; validated first.

    Returns:
        The layer's :class:`LayerScore`.

    Raises:
        ValueError: invalid config (see :func:`validate_config`) or a weight
            that is not a finite, non-empty 2-D matrix.
    """
    validate_config(config)
    return CRITERIA[config.name](weight, config)


def _rank_normalise(x: np.ndarray) -> np.ndarray:
    """Map ``x`` to ``(rank - 1) / (M - 1)`` in ``[0, 1]``; ties share their mean rank.

    A single value, or all-equal values, map to 0.5.
    """
    if x.size == 1:
        return np.full(1, 0.5)
    return (stats.rankdata(x, method="average") - 1.0) / (x.size - 1)


def score_group(layers: Sequence[LayerScore]) -> tuple[np.ndarray, np.ndarray | None]:
    """Aggregate the scores of the members of a coupled channel group.

    Importance is a Borda count: each member's importance is rank-normalised,
    ``r_i = (rank_i - 1) / (M - 1)`` in ``[0, 1]`` (ties share their average
    rank; ``M == 1`` gives 0.5), and the group importance is the mean of the
    ``r`` over members.  Ranks make members with different scales and signs
    (e.g. ``-|z|`` next to an L1 norm) comparable, and are invariant to any
    increasing transform of a member's scores.  A channel is insignificant
    for the group only when it is insignificant for every member (logical
    AND); the mask is None if any member's is None.

    Args:
        layers: The group's members, all with the same ``M``.

    Returns:
        ``(importance [M] float64, insignificant [M] bool or None)``.

    Raises:
        ValueError: no members, or members with different ``M``.
    """
    if len(layers) == 0:
        raise ValueError("score_group needs at least one member")
    sizes = {np.shape(layer.importance) for layer in layers}
    if len(sizes) != 1 or len(next(iter(sizes))) != 1:
        raise ValueError(f"group members must all have importance of the same shape [M], got shapes {sorted(sizes)}")
    ranks = np.stack([_rank_normalise(np.asarray(layer.importance, dtype=np.float64)) for layer in layers])
    importance = ranks.mean(axis=0)
    masks = [layer.insignificant for layer in layers]
    if any(mask is None for mask in masks):
        return importance, None
    return importance, np.logical_and.reduce([np.asarray(mask, dtype=bool) for mask in masks])


def select_keep(importance: np.ndarray, n_keep: int) -> np.ndarray:
    """Indices of the ``n_keep`` most important filters.

    Filters are ordered by decreasing importance; among equal importances the
    lower index wins (a stable sort), so the result is deterministic.

    Args:
        importance: ``[M]`` scores, higher = more worth keeping, no NaN.
        n_keep: How many to keep, ``0 <= n_keep <= M``.

    Returns:
        Sorted ``[n_keep]`` int64 indices.

    Raises:
        ValueError: importance not 1-D or containing NaN; n_keep out of range.
    """
    x = np.asarray(importance, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"importance must be 1-D, got shape {x.shape}")
    if np.any(np.isnan(x)):
        raise ValueError("importance contains NaN")
    if isinstance(n_keep, bool) or not isinstance(n_keep, (int, np.integer)):
        raise ValueError(f"n_keep must be an integer, got {n_keep!r}")
    if not 0 <= n_keep <= x.size:
        raise ValueError(f"n_keep must be in [0, {x.size}], got {n_keep}")
    order = np.argsort(-x, kind="stable")
    return np.sort(order[:n_keep]).astype(np.int64)
