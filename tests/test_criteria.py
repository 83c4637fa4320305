"""Oracles for onnx_pfgdf.criteria: hand-made layers with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_allclose, assert_array_equal
from scipy import stats

from onnx_pfgdf.criteria import (
    CRITERIA,
    SIDES,
    STATISTICS,
    CriterionConfig,
    GaussianFit,
    LayerScore,
    filter_statistics,
    fit_gaussian,
    score_group,
    score_layer,
    select_keep,
)

# Rows chosen so that L1 and L2 order the filters differently.
#   row 0: [3, 0, 0]         L1 3.0   L2 3.0
#   row 1: [1.5, 1.5, 1.5]   L1 4.5   L2 sqrt(6.75) = 2.598
#   row 2: [0, -2, 0]        L1 2.0   L2 2.0
#   row 3: [0.5, -0.5, 0.5]  L1 1.5   L2 sqrt(0.75) = 0.866
NORM_LAYER = np.array(
    [
        [3.0, 0.0, 0.0],
        [1.5, 1.5, 1.5],
        [0.0, -2.0, 0.0],
        [0.5, -0.5, 0.5],
    ]
)


def _config(**kwargs: object) -> CriterionConfig:
    return CriterionConfig(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- registry


def test_registry_holds_exactly_the_documented_criteria() -> None:
    assert set(CRITERIA) == {"pfgdf", "l1", "l2", "fpgm", "random"}
    assert len(CRITERIA) == 5


def test_registry_refuses_duplicate_keys_and_item_assignment() -> None:
    with pytest.raises(ValueError, match="already registered"):
        CRITERIA.register("l1")(lambda w, c: LayerScore(importance=np.zeros(len(w))))
    with pytest.raises(TypeError):
        CRITERIA["l1"] = CRITERIA["l2"]  # type: ignore[index]
    # The failed registration did not replace the original.
    assert_allclose(CRITERIA["l1"](NORM_LAYER, _config(name="l1")).importance, [3.0, 4.5, 2.0, 1.5])


# --------------------------------------------------------------------------- baselines


def test_l1_exact_values_and_order() -> None:
    score = score_layer(NORM_LAYER, _config(name="l1"))
    assert score.importance.dtype == np.float64
    assert_allclose(score.importance, [3.0, 4.5, 2.0, 1.5])
    assert score.insignificant is None and score.fit is None
    assert_array_equal(select_keep(score.importance, 1), [1])
    assert_array_equal(select_keep(score.importance, 3), [0, 1, 2])


def test_l2_exact_values_and_order() -> None:
    score = score_layer(NORM_LAYER, _config(name="l2"))
    assert_allclose(score.importance, [3.0, math.sqrt(6.75), 2.0, math.sqrt(0.75)])
    assert_array_equal(select_keep(score.importance, 1), [0])


def test_fpgm_geometric_median_is_least_important() -> None:
    # Filters are 2-D points: a cross around the origin plus one far point.
    # The origin (row 3) has the smallest summed distance to the others.
    points = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, -1.0], [6.0, 6.0]])
    score = score_layer(points, _config(name="fpgm"))
    expected = [sum(np.linalg.norm(p - q) for q in points) for p in points]
    assert_allclose(score.importance, expected)
    assert int(np.argmin(score.importance)) == 3
    assert int(np.argmax(score.importance)) == 5
    assert 3 not in select_keep(score.importance, 5)


def test_fpgm_ignores_alpha_mask() -> None:
    score = score_layer(NORM_LAYER, _config(name="fpgm", alpha=1.0))
    assert score.insignificant is None


def test_random_is_seeded_uniform() -> None:
    w = np.ones((50, 4))
    a = score_layer(w, _config(name="random", seed=7)).importance
    b = score_layer(w, _config(name="random", seed=7)).importance
    c = score_layer(w, _config(name="random", seed=8)).importance
    assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert_array_equal(a, np.random.default_rng(7).random(50))
    assert np.all((a >= 0) & (a < 1))


# --------------------------------------------------------------------------- Gaussian fit


def test_fit_gaussian_moments_and_ks_small_for_gaussian() -> None:
    x = np.random.default_rng(0).normal(2.0, 0.5, 2000)
    fit = fit_gaussian(x)
    assert fit.mu == pytest.approx(float(np.mean(x)))
    assert fit.sigma == pytest.approx(float(np.std(x)))
    assert fit.n == 2000
    assert fit.ks_statistic < 0.03
    assert fit.ks_pvalue > 0.05


def test_fit_gaussian_ks_large_for_bimodal() -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(-3.0, 0.3, 1000), rng.normal(3.0, 0.3, 1000)])
    fit = fit_gaussian(x)
    assert fit.ks_statistic > 0.15
    assert fit.ks_pvalue < 1e-10


def test_fit_gaussian_constant_and_single_sample() -> None:
    for x in (np.full(17, 0.1), np.array([3.5])):
        fit = fit_gaussian(x)
        assert fit == GaussianFit(mu=float(x[0]), sigma=0.0, ks_statistic=0.0, ks_pvalue=1.0, n=x.size)


def test_fit_gaussian_to_dict_is_plain_numbers() -> None:
    d = fit_gaussian(np.array([0.0, 1.0, 2.0])).to_dict()
    assert set(d) == {"mu", "sigma", "ks_statistic", "ks_pvalue", "n"}
    assert all(type(v) in (float, int) for v in d.values())
    assert d["mu"] == 1.0 and d["n"] == 3


def test_fit_gaussian_rejects_empty_and_nan() -> None:
    with pytest.raises(ValueError, match="empty"):
        fit_gaussian(np.array([]))
    with pytest.raises(ValueError, match="NaN"):
        fit_gaussian(np.array([1.0, np.nan]))


def test_layer_fit_is_reported_for_pfgdf() -> None:
    w = np.random.default_rng(2).normal(size=(30, 9))
    score = score_layer(w, _config(statistic="std"))
    assert score.fit is not None
    assert score.fit.mu == pytest.approx(float(w.std(axis=1).mean()))
    assert score.fit.n == 30
    raw = score_layer(w, _config(statistic="weights"))
    assert raw.fit is not None and raw.fit.n == 270


# --------------------------------------------------------------------------- PFGDF, per-filter statistics


def test_filter_statistics_definitions() -> None:
    w = np.array([[1.0, -3.0], [2.0, 2.0]])
    assert_allclose(filter_statistics(w, "mean"), [-1.0, 2.0])
    assert_allclose(filter_statistics(w, "l1"), [2.0, 2.0])
    assert_allclose(filter_statistics(w, "l2"), [math.sqrt(5.0), 2.0])
    assert_allclose(filter_statistics(w, "std"), [2.0, 0.0])
    with pytest.raises(ValueError, match="weights"):
        filter_statistics(w, "weights")


# Rows filled with one constant c_i: the "mean" statistic is exactly c_i.
# mu = 0, sigma = sqrt(20.02 / 7) = 1.6912, so z_i = c_i / 1.6912.
CENTRES = np.array([-3.0, -1.0, -0.1, 0.0, 0.1, 1.0, 3.0])
CONST_ROWS = np.repeat(CENTRES[:, None], 5, axis=1)


def test_pfgdf_outside_exact_on_constructed_statistic() -> None:
    score = score_layer(CONST_ROWS, _config(statistic="mean", side="outside", alpha=1.5))
    sigma = math.sqrt(np.mean(CENTRES**2))
    assert score.fit is not None and score.fit.sigma == pytest.approx(sigma)
    assert_allclose(score.importance, -np.abs(CENTRES) / sigma, atol=1e-12)
    # |c| > 1.5 * 1.6912 = 2.54: only the two +-3 rows.
    assert_array_equal(np.flatnonzero(score.insignificant), [0, 6])


def test_pfgdf_inside_exact_on_constructed_statistic() -> None:
    score = score_layer(CONST_ROWS, _config(statistic="mean", side="inside", alpha=0.5))
    sigma = math.sqrt(np.mean(CENTRES**2))
    assert_allclose(score.importance, np.abs(CENTRES) / sigma, atol=1e-12)
    # |c| < 0.5 * 1.6912 = 0.846: the three central rows.
    assert_array_equal(np.flatnonzero(score.insignificant), [2, 3, 4])
    # Rank mode: the most central row is the first to go.
    assert_array_equal(select_keep(score.importance, 6), [0, 1, 2, 4, 5, 6])


def test_pfgdf_std_statistic_uses_within_filter_spread() -> None:
    # Row i alternates +-s_i, so its std is exactly |s_i|; the mean is 0 for every row.
    spread = np.array([0.1, 1.0, 1.1, 0.9, 1.0, 5.0])
    w = spread[:, None] * np.array([1.0, -1.0, 1.0, -1.0])
    score = score_layer(w, _config(statistic="std", side="outside", alpha=1.5))
    assert_array_equal(np.flatnonzero(score.insignificant), [5])
    mean_score = score_layer(w, _config(statistic="mean", side="outside", alpha=1.5))
    assert not mean_score.insignificant.any()  # every row mean is 0: sigma == 0


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("statistic", ["l1", "l2"])
def test_pfgdf_marks_planted_outliers_of_gaussian_layer(seed: int, statistic: str) -> None:
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 0.1, size=(64, 144))  # 64 filters of a 16-channel 3x3 conv
    w[[5, 17]] *= 4.0  # two loud filters
    w[40] *= 0.05  # one nearly dead filter
    outside = score_layer(w, _config(statistic=statistic, side="outside", alpha=1.0))
    assert_array_equal(np.flatnonzero(outside.insignificant), [5, 17, 40])
    # Rank mode agrees: the three outliers are the three least important.
    assert_array_equal(np.setdiff1d(np.arange(64), select_keep(outside.importance, 61)), [5, 17, 40])
    # Reading B with the same interval marks exactly the complement.
    inside = score_layer(w, _config(statistic=statistic, side="inside", alpha=1.0))
    assert_array_equal(inside.insignificant, ~outside.insignificant)


def test_pfgdf_rank_mode_has_no_mask() -> None:
    score = score_layer(CONST_ROWS, _config(statistic="mean"))
    assert score.insignificant is None
    assert score.importance.shape == (7,)


# --------------------------------------------------------------------------- PFGDF, raw weights


def test_pfgdf_weights_tail_mass_exact() -> None:
    # All 12 weights: mu = 0, sigma = sqrt(mean(w^2)).
    w = np.array(
        [
            [0.1, -0.1, 0.0, 0.1],  # all inside any reasonable interval
            [3.0, -3.0, 0.1, 0.0],  # half in the tails
            [3.0, -3.0, 3.0, -3.0],  # all in the tails
        ]
    )
    score = score_layer(w, _config(statistic="weights", alpha=1.0))
    sigma = float(np.std(w))
    assert score.fit is not None and score.fit.sigma == pytest.approx(sigma)
    expected_t = (np.abs(w - w.mean()) > sigma).mean(axis=1)
    assert_allclose(expected_t, [0.0, 0.5, 1.0])  # guards the oracle itself
    assert_allclose(score.importance, expected_t)
    assert_array_equal(score.insignificant, [True, False, False])
    mirror = score_layer(w, _config(statistic="weights", side="inside", alpha=1.0))
    assert_allclose(mirror.importance, -expected_t)
    # 1.5 * 2 * (1 - Phi(1)) = 0.476: rows with t >= 0.476.
    assert_array_equal(mirror.insignificant, [False, True, True])


def test_pfgdf_weights_rank_mode_uses_one_sigma() -> None:
    w = np.random.default_rng(3).normal(size=(10, 50))
    sigma = w.std()
    score = score_layer(w, _config(statistic="weights"))
    assert score.insignificant is None
    assert_allclose(score.importance, (np.abs(w - w.mean()) > sigma).mean(axis=1))


@pytest.mark.parametrize("seed", range(5))
def test_pfgdf_weights_marks_planted_quiet_and_loud_filters(seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 1.0, size=(32, 400))
    w[[3, 20]] *= 0.01  # quiet: every weight well inside I(1)
    w[7] *= 4.0  # loud: most weights in the tails
    quiet = score_layer(w, _config(statistic="weights", side="outside", alpha=1.0))
    assert_array_equal(np.flatnonzero(quiet.insignificant), [3, 20])
    loud = score_layer(w, _config(statistic="weights", side="inside", alpha=1.0))
    assert_array_equal(np.flatnonzero(loud.insignificant), [7])


# --------------------------------------------------------------------------- degenerate layers


@pytest.mark.parametrize("statistic", STATISTICS)
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize(
    "weight",
    [np.array([[0.3, -1.2, 0.5]]), np.full((6, 4), 0.1), np.zeros((3, 2)), np.array([[1.0], [2.0]])],
    ids=["one-filter", "constant", "zeros", "K=1"],
)
def test_pfgdf_degenerate_layers_mark_nothing(statistic: str, side: str, weight: np.ndarray) -> None:
    score = score_layer(weight, _config(statistic=statistic, side=side, alpha=0.5))
    assert score.importance.shape == (weight.shape[0],)
    assert np.all(np.isfinite(score.importance))
    if weight.shape[0] == 1 or np.ptp(weight) == 0:
        assert not score.insignificant.any()


def test_constant_rows_with_rounding_noise_are_degenerate() -> None:
    # np.std of many copies of 0.1 is ~1e-17, not 0; the fit must still say 0.
    assert np.std(np.full(1000, 0.1)) != 0.0
    score = score_layer(np.full((1000, 3), 0.1), _config(statistic="mean", side="inside", alpha=1.0))
    assert score.fit is not None and score.fit.sigma == 0.0
    assert not score.insignificant.any()
    assert_array_equal(score.importance, np.zeros(1000))


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (CriterionConfig(name="hrank"), "unknown criterion 'hrank'"),
        (CriterionConfig(statistic="median"), "unknown statistic 'median'"),
        (CriterionConfig(side="both"), "unknown side 'both'"),
        (CriterionConfig(alpha=0.0), "alpha must be a finite number > 0"),
        (CriterionConfig(alpha=-1.0), "alpha must be a finite number > 0"),
        (CriterionConfig(alpha=float("nan")), "alpha must be a finite number > 0"),
        (CriterionConfig(alpha="2"), "alpha must be a number"),  # type: ignore[arg-type]
        (CriterionConfig(name="random", seed=-1), "seed must be a non-negative integer"),
    ],
)
def test_invalid_config_is_rejected(config: CriterionConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        score_layer(NORM_LAYER, config)


@pytest.mark.parametrize(
    "weight", [np.ones((2, 3, 3)), np.ones(4), np.ones((0, 3)), np.ones((3, 0)), np.array([[1.0, np.inf]])]
)
def test_malformed_weight_is_rejected(weight: np.ndarray) -> None:
    for name in CRITERIA:
        with pytest.raises(ValueError):
            score_layer(weight, _config(name=name))


def test_registered_criteria_validate_when_called_directly() -> None:
    with pytest.raises(ValueError, match="unknown side"):
        CRITERIA["pfgdf"](NORM_LAYER, _config(side="left"))


# --------------------------------------------------------------------------- groups


def test_score_group_is_mean_of_rank_normalised_members() -> None:
    a = LayerScore(importance=np.array([10.0, 20.0, 30.0]), insignificant=np.array([True, True, False]))
    b = LayerScore(importance=np.array([3.0, 1.0, 2.0]), insignificant=np.array([True, False, False]))
    importance, insignificant = score_group([a, b])
    # ranks a: [0, .5, 1], b: [1, 0, .5]
    assert_allclose(importance, [0.5, 0.25, 0.75])
    assert_array_equal(insignificant, [True, False, False])


def test_score_group_is_scale_and_sign_free() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=8), rng.normal(size=8)
    ref, _ = score_group([LayerScore(a), LayerScore(b)])
    scaled, _ = score_group([LayerScore(1000.0 * a), LayerScore(np.exp(b) - 5.0)])
    assert_allclose(ref, scaled)


def test_score_group_ties_and_single_member() -> None:
    importance, mask = score_group([LayerScore(np.array([1.0, 1.0, 2.0]))])
    assert_allclose(importance, [0.25, 0.25, 1.0])
    assert mask is None
    one, _ = score_group([LayerScore(np.array([7.0]))])
    assert_allclose(one, [0.5])


def test_score_group_mask_none_if_any_member_lacks_it() -> None:
    a = LayerScore(np.array([1.0, 2.0]), insignificant=np.array([True, True]))
    b = LayerScore(np.array([1.0, 2.0]))
    assert score_group([a, b])[1] is None


def test_score_group_rejects_empty_and_mismatched() -> None:
    with pytest.raises(ValueError, match="at least one"):
        score_group([])
    with pytest.raises(ValueError, match="same"):
        score_group([LayerScore(np.zeros(3)), LayerScore(np.zeros(4))])


# --------------------------------------------------------------------------- select_keep


def test_select_keep_tie_break_by_lower_index() -> None:
    importance = np.array([1.0, 2.0, 2.0, 2.0, 0.0])
    assert_array_equal(select_keep(importance, 2), [1, 2])
    assert_array_equal(select_keep(importance, 4), [0, 1, 2, 3])
    assert_array_equal(select_keep(np.zeros(5), 3), [0, 1, 2])
    # -0.0 and 0.0 are a tie, not an order.
    assert_array_equal(select_keep(np.array([-0.0, 0.0]), 1), [0])
    kept = select_keep(importance, 0)
    assert kept.dtype == np.int64 and kept.shape == (0,)


def test_select_keep_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_keep"):
        select_keep(np.zeros(3), 4)
    with pytest.raises(ValueError, match="n_keep"):
        select_keep(np.zeros(3), -1)
    with pytest.raises(ValueError, match="NaN"):
        select_keep(np.array([1.0, np.nan]), 1)
    with pytest.raises(ValueError, match="1-D"):
        select_keep(np.zeros((2, 2)), 1)


# --------------------------------------------------------------------------- properties

_ALL_CONFIGS = [CriterionConfig(name=n) for n in ("l1", "l2", "fpgm", "random")] + [
    CriterionConfig(statistic=s, side=d, alpha=a) for s in STATISTICS for d in SIDES for a in (None, 0.3, 1.0, 2.5)
]


@st.composite
def _layers(draw: st.DrawFn) -> np.ndarray:
    m = draw(st.integers(1, 12))
    k = draw(st.integers(1, 10))
    elements = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)
    w = draw(hnp.arrays(np.float64, (m, k), elements=elements))
    constant_rows = draw(st.lists(st.integers(0, m - 1), max_size=m))
    for row in constant_rows:
        w[row] = w[row, 0]
    return w


@settings(max_examples=150, deadline=None)
@given(weight=_layers(), config=st.sampled_from(_ALL_CONFIGS), data=st.data())
def test_property_scores_are_well_formed(weight: np.ndarray, config: CriterionConfig, data: st.DataObject) -> None:
    m = weight.shape[0]
    score = score_layer(weight, config)
    assert score.importance.shape == (m,)
    assert score.importance.dtype == np.float64
    assert not np.any(np.isnan(score.importance))
    if config.name == "pfgdf" and config.alpha is not None:
        mask = score.insignificant
        assert mask is not None and mask.shape == (m,) and mask.dtype == np.bool_
        if m == 1:
            assert not mask.any()
        # The mask is a threshold of the importance: every marked filter ranks
        # no higher than every unmarked one.
        if mask.any() and (~mask).any():
            assert score.importance[mask].max() <= score.importance[~mask].min()
    else:
        assert score.insignificant is None
    n_keep = data.draw(st.integers(0, m))
    kept = select_keep(score.importance, n_keep)
    assert kept.dtype == np.int64
    assert kept.shape == (n_keep,)
    assert np.all(np.diff(kept) > 0)  # sorted and unique
    assert np.all((kept >= 0) & (kept < m))
    # Nothing dropped outranks anything kept.
    dropped = np.setdiff1d(np.arange(m), kept)
    if kept.size and dropped.size:
        assert score.importance[dropped].max() <= score.importance[kept].min()


@settings(max_examples=100, deadline=None)
@given(
    importance=hnp.arrays(
        np.float64, st.integers(1, 30), elements=st.sampled_from([-1.0, 0.0, 0.5, 2.0, np.inf, -np.inf])
    ),
    data=st.data(),
)
def test_property_select_keep_matches_sorted_oracle(importance: np.ndarray, data: st.DataObject) -> None:
    n_keep = data.draw(st.integers(0, importance.size))
    oracle = sorted(range(importance.size), key=lambda i: (-importance[i], i))[:n_keep]
    assert_array_equal(select_keep(importance, n_keep), sorted(oracle))


@settings(max_examples=60, deadline=None)
@given(
    members=st.integers(1, 4).flatmap(
        lambda g: st.integers(1, 10).flatmap(
            lambda m: st.lists(
                st.tuples(
                    hnp.arrays(np.float64, m, elements=st.floats(-5, 5, allow_nan=False)),
                    st.none() | hnp.arrays(np.bool_, m),
                ),
                min_size=g,
                max_size=g,
            )
        )
    )
)
def test_property_score_group_bounds_and_mask(members: list[tuple[np.ndarray, np.ndarray | None]]) -> None:
    layers = [LayerScore(importance=imp, insignificant=mask) for imp, mask in members]
    importance, mask = score_group(layers)
    assert importance.shape == members[0][0].shape
    assert np.all((importance >= 0) & (importance <= 1))
    expected_rank = np.mean([(stats.rankdata(imp) - 1) / max(imp.size - 1, 1) for imp, _ in members], axis=0)
    if importance.size > 1:
        assert_allclose(importance, expected_rank)
    masks = [m for _, m in members]
    if any(m is None for m in masks):
        assert mask is None
    else:
        assert_array_equal(mask, np.all(masks, axis=0))
