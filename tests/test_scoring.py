"""Tests of transferkit.scoring: common checks over every scorer, then per-method values."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier

from transferkit.errors import ConfigError, DataError, NotFittedError, UnknownNameError
from transferkit.scoring import SCORERS, Scorer, get_scorer, informative, list_scorers

ALL = SCORERS.names()
FEATURE = [n for n in ALL if SCORERS.get(n).input_kind == "features"]
PROBA = [n for n in ALL if SCORERS.get(n).input_kind == "probabilities"]
SEEDS = [0, 1, 2]


def make_data(kind: str, seed: int = 0, informative: bool = True, n_per_class: int = 20,
              n_classes: int = 3, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A balanced synthetic task: features (class-shifted Gaussians or pure noise) or source
    probabilities (sharp on a source class tied to the target class, or near-uniform)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    rng.shuffle(y)
    n = len(y)
    if kind == "features":
        X = rng.normal(size=(n, dim))
        if informative:
            X[:, :n_classes] += 3.0 * np.eye(n_classes)[y]
        return X, y
    n_source = n_classes + 2
    if informative:
        logits = rng.normal(size=(n, n_source)) + 5.0 * np.eye(n_source)[y]
    else:
        logits = 0.1 * rng.normal(size=(n, n_source))
    P = np.exp(logits)
    return P / P.sum(axis=1, keepdims=True), y


def data_for(name: str, seed: int = 0, **kw) -> tuple[np.ndarray, np.ndarray]:
    return make_data(SCORERS.get(name).input_kind, seed, **kw)


# ----------------------------------------------------------------- common checks


def test_registry_and_listing():
    assert set(ALL) == {"logme", "leep", "nce", "hscore", "regularized_hscore", "knn", "linear"}
    listed = list_scorers()
    assert [row[0] for row in listed] == ALL
    for name, summary, kind in listed:
        assert summary and "\n" not in summary
        assert kind in ("features", "probabilities")
    assert set(PROBA) == {"leep", "nce"}


def test_get_scorer_errors():
    with pytest.raises(UnknownNameError, match=r"Unknown scorer 'lgme'\. Did you mean 'logme'\?"):
        get_scorer("lgme")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) kk; its options are: k, folds"):
        get_scorer("knn", kk=3)
    assert get_scorer("knn", k=3).get_params() == {"k": 3, "folds": 5, "random_state": 0}
    assert repr(get_scorer("knn", k=3)) == "KNNProbe(k=3, folds=5, random_state=0)"


@pytest.mark.parametrize("name", ALL)
def test_fit_returns_self_and_sets_finite_score(name):
    X, y = data_for(name)
    scorer = get_scorer(name)
    assert isinstance(scorer, Scorer)
    assert scorer.fit(X, y) is scorer
    assert type(scorer.score_) is float and np.isfinite(scorer.score_)
    assert list(scorer.classes_) == [0, 1, 2]
    assert scorer.n_features_in_ == X.shape[1]


@pytest.mark.parametrize("name", ALL)
def test_score_before_fit_raises(name):
    scorer = get_scorer(name)
    with pytest.raises(NotFittedError, match=r"is not fitted yet; call `fit\(X, y\)` first"):
        scorer.score_
    assert not hasattr(scorer, "classes_")  # NotFittedError is an AttributeError


@pytest.mark.parametrize("name", ALL)
def test_deterministic(name):
    X, y = data_for(name, seed=1)
    assert get_scorer(name).fit(X, y).score_ == get_scorer(name).fit(X.copy(), y.copy()).score_


@pytest.mark.parametrize("name", ALL)
def test_labels_are_mapped(name):
    X, y = data_for(name, seed=2)
    ref = get_scorer(name).fit(X, y).score_
    sparse = np.array([3, 7, 10])[y]
    words = np.array(["ant", "bee", "cat"])[y]
    assert get_scorer(name).fit(X, sparse).score_ == pytest.approx(ref, rel=1e-12)
    scorer = get_scorer(name).fit(X, list(words))
    assert scorer.score_ == pytest.approx(ref, rel=1e-12)
    assert list(scorer.classes_) == ["ant", "bee", "cat"]


@pytest.mark.parametrize("name", ALL)
def test_degenerate_input_raises(name):
    X, y = data_for(name)
    fit = get_scorer(name).fit
    with pytest.raises(DataError, match=r"`y` has only 1 class \(0\); .* at least 2 classes"):
        fit(X, np.zeros(len(y), dtype=int))
    y1 = y.copy()
    y1[0] = 9
    with pytest.raises(DataError, match=r"`y` has classes with fewer than 2 examples: \[9\]"):
        fit(X, y1)
    Xn = X.copy()
    Xn[4, 1] = np.nan
    with pytest.raises(DataError, match=r"`X` contains 1 NaN .*, the first at row 4, column 1"):
        fit(Xn, y)
    with pytest.raises(DataError, match=r"`X` must be a 2-D array .* \(60,\)\. Use `X\.reshape"):
        fit(X[:, 0], y)
    with pytest.raises(DataError, match=r"one label per row of `X`: got 59 labels for 60 rows"):
        fit(X, y[:-1])
    with pytest.raises(DataError, match=r"`y` must be a 1-D array .* \(60, 1\)\. Use `y\.ravel"):
        fit(X, y[:, None])
    with pytest.raises(DataError, match=r"`X` must be a numeric array"):
        fit(np.array([["a", "b"]] * len(y)), y)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("seed", SEEDS)
def test_informative_beats_noise(name, seed):
    good = get_scorer(name).fit(*data_for(name, seed, informative=True)).score_
    bad = get_scorer(name).fit(*data_for(name, seed, informative=False)).score_
    assert good > bad


@pytest.mark.parametrize("name", FEATURE)
def test_feature_scale_does_not_matter(name):
    X, y = data_for(name, seed=0)
    ref = get_scorer(name).fit(X, y).score_
    for scale in (1e150, 1e-150):
        assert get_scorer(name).fit(X * scale, y).score_ == pytest.approx(ref, rel=1e-8, abs=1e-12)


@pytest.mark.parametrize("name", FEATURE)
def test_constant_features(name):
    X, y = data_for(name, seed=0)
    ref = get_scorer(name).fit(X, y).score_
    padded = np.c_[X, np.full(len(X), 2.5), np.zeros(len(X))]
    score = get_scorer(name).fit(padded, y).score_
    assert np.isfinite(score)
    if name in ("hscore", "linear"):
        # zero-variance directions get no weight. (logme: a constant column acts as a bias
        # term; regularized_hscore: it lowers the shrinkage target; knn: it shifts vectors
        # before normalisation. These change the score, by design of each method.)
        assert score == pytest.approx(ref, rel=1e-9)
    for const in (np.zeros((len(y), 4)), np.ones((len(y), 4))):
        score = get_scorer(name).fit(const, y).score_
        assert np.isfinite(score)
        if name in ("hscore", "regularized_hscore"):
            assert score == 0.0  # no class information
        if name in ("knn", "linear"):
            assert score == pytest.approx(1 / 3, abs=0.1)  # chance level


@pytest.mark.parametrize("name", PROBA)
def test_probabilities_are_checked(name):
    P, y = data_for(name)
    with pytest.raises(DataError, match=r"row 0 has a negative value .* Pass softmax\(logits\)"):
        get_scorer(name).fit(np.log(P), y)
    with pytest.raises(DataError, match=r"row 0 sums to 2.*Apply a softmax"):
        get_scorer(name).fit(P * 2, y)
    # float32 round-off in the row sums is accepted
    assert np.isfinite(get_scorer(name).fit(P.astype(np.float32), y).score_)


def test_non_finite_results_are_errors():
    class Broken(Scorer):
        name = "broken"

        def __init__(self, fail: str = "nan") -> None:
            self.fail = fail

        def _compute(self, X, y, n_classes):
            if self.fail == "linalg":
                raise np.linalg.LinAlgError("Eigenvalues did not converge")
            return float("nan")

    X, y = make_data("features")
    with pytest.raises(DataError, match=r"broken gave a non-finite score \(nan\) for `X` of shape"):
        Broken().fit(X, y)
    with pytest.raises(DataError, match=r"broken failed on `X` .*: Eigenvalues did not converge"):
        Broken("linalg").fit(X, y)
    with pytest.raises(NotFittedError):
        Broken().score_  # a failed fit leaves the scorer unfitted


def test_bad_hyperparameters():
    X, y = make_data("features")
    for name, params, pattern in [
        ("knn", {"k": 0}, r"`k` must be an integer >= 1; got 0"),
        ("knn", {"folds": 1}, r"`folds` must be an integer >= 2"),
        ("linear", {"C": -1.0}, r"`C` must be a positive number"),
        ("logme", {"tol": 2.0}, r"`tol` must be a number in \(0, 1\)"),
        ("hscore", {"rcond": -1}, r"`rcond` must be a number in \[0, 1\)"),
        ("regularized_hscore", {"ddof": 2}, r"`ddof` must be 0 or 1; got 2"),
        ("regularized_hscore", {"ddof": 1.0}, r"`ddof` must be 0 or 1; got 1.0"),
    ]:
        with pytest.raises(ConfigError, match=pattern):
            get_scorer(name, **params).fit(X, y)


# ----------------------------------------------------------------- LEEP and NCE

P6 = np.array([
    [0.7, 0.2, 0.1],
    [0.6, 0.3, 0.1],
    [0.1, 0.8, 0.1],
    [0.2, 0.5, 0.3],
    [0.1, 0.1, 0.8],
    [0.3, 0.3, 0.4],
])
Y6 = np.array([0, 0, 1, 1, 0, 1])


def test_leep_matches_explicit_loops():
    n, n_src = P6.shape
    joint = [[0.0] * n_src for _ in range(2)]
    for i in range(n):
        for z in range(n_src):
            joint[Y6[i]][z] += P6[i, z] / n
    total = 0.0
    for i in range(n):
        eep = 0.0
        for z in range(n_src):
            pz = joint[0][z] + joint[1][z]
            eep += joint[Y6[i]][z] / pz * P6[i, z]
        total += np.log(eep)
    assert get_scorer("leep").fit(P6, Y6).score_ == pytest.approx(total / n, rel=1e-12)


def test_leep_hand_values():
    # one-hot source predictions that name the target class: P(y|z) is 0/1 -> LEEP = 0
    assert get_scorer("leep").fit(np.eye(3)[[0, 0, 1, 1, 2, 2]], [0, 0, 1, 1, 2, 2]).score_ == 0.0
    # identical rows tell nothing: LEEP = mean log P(y) = log(1/2) for balanced classes
    same = np.tile([0.5, 0.25, 0.25], (4, 1))
    assert get_scorer("leep").fit(same, [0, 0, 1, 1]).score_ == pytest.approx(np.log(0.5))


def test_nce_matches_explicit_loops():
    # argmax of P6 rows: z = [0, 0, 1, 1, 2, 2]; joint counts /6: (y,z) =
    # (0,0)=2, (1,1)=2, (0,2)=1, (1,2)=1  -> NCE = 2/6 log 1 + 2/6 log 1 + 2 * 1/6 log 1/2
    assert get_scorer("nce").fit(P6, Y6).score_ == pytest.approx(np.log(0.5) / 3, rel=1e-12)
    rng = np.random.default_rng(0)
    P = rng.dirichlet(np.ones(4), size=30)
    y = rng.integers(0, 3, 30)
    z = P.argmax(axis=1)
    expected = 0.0
    for yy in range(3):
        for zz in range(4):
            pyz = np.mean((y == yy) & (z == zz))
            pz = np.mean(z == zz)
            if pyz > 0:
                expected += pyz * np.log(pyz / pz)
    assert get_scorer("nce").fit(P, y).score_ == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------------------- H-scores


def _between(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    G = np.zeros_like(X)
    for c in np.unique(y):
        G[y == c] = X[y == c].mean(axis=0)
    return np.cov(G, rowvar=False, bias=True)


@pytest.mark.parametrize("seed", SEEDS)
def test_hscore_matches_numpy_formula(seed):
    X, y = make_data("features", seed, dim=5)
    expected = np.trace(np.linalg.inv(np.cov(X, rowvar=False, bias=True)) @ _between(X, y))
    assert get_scorer("hscore").fit(X, y).score_ == pytest.approx(expected, rel=1e-9)
    assert 0 < expected < 2  # at most C - 1


def published_regularized_h_score(features: np.ndarray, labels: np.ndarray) -> float:
    """The published regularized H-score, transcribed independently of our code: centre the
    features, scikit-learn's LedoitWolf covariance (1/N) and shrinkage, class means of the
    centred features, ``np.cov`` of them (1/(N-1)), ``pinv(rcond=1e-15)``; all in float64.
    (thuml/Transfer-Learning-Library, tllib/ranking/hscore.py, ``regularized_h_score``.)"""
    f = np.asarray(features, dtype=np.float64)
    f = f - f.mean(axis=0, keepdims=True)
    lw = LedoitWolf(assume_centered=False).fit(f)
    g = np.zeros_like(f)
    for c in range(int(labels.max()) + 1):
        g[labels == c] = f[labels == c].mean(axis=0)
    covg = np.cov(g, rowvar=False)
    inv = np.linalg.pinv(lw.covariance_, rcond=1e-15)
    return float(np.trace(inv @ ((1 - lw.shrinkage_) * covg)))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    "n_per_class, n_classes, dim", [(40, 5, 32), (20, 3, 100), (100, 10, 16), (10, 4, 500)]
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_regularized_hscore_matches_published_code(seed, n_per_class, n_classes, dim, dtype):
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(n_classes), n_per_class))
    X = rng.normal(size=(len(y), dim)) + 0.5 * rng.normal(size=(n_classes, dim))[y]
    X = (40.0 * X + 7.0).astype(dtype)  # not centred, not unit scale
    expected = published_regularized_h_score(X, y)
    scorer = get_scorer("regularized_hscore").fit(X, y)
    assert scorer.score_ == pytest.approx(expected, rel=1e-9)
    lw = LedoitWolf().fit(X.astype(np.float64))
    assert scorer.shrinkage_ == pytest.approx(lw.shrinkage_, rel=1e-9)
    # ddof=0: 1/N for both covariances, N/(N-1) below the published value (0.50 % at N = 200)
    n = len(y)
    plain = get_scorer("regularized_hscore", ddof=0).fit(X, y).score_
    assert plain == pytest.approx(expected * (n - 1) / n, rel=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_regularized_hscore_ddof0_matches_ledoit_wolf_formula(seed):
    X, y = make_data("features", seed, n_per_class=10, dim=12)
    lw = LedoitWolf().fit(X)
    expected = np.trace(np.linalg.inv(lw.covariance_) @ ((1 - lw.shrinkage_) * _between(X, y)))
    scorer = get_scorer("regularized_hscore", ddof=0).fit(X, y)
    assert scorer.score_ == pytest.approx(expected, rel=1e-9)
    assert 0 < scorer.shrinkage_ < 1


def test_regularized_hscore_without_shrinkage_is_hscore():
    X, y = make_data("features", 0)
    x1 = X[:, :1]  # Ledoit-Wolf does not shrink a single feature
    assert get_scorer("regularized_hscore").fit(x1, y).shrinkage_ == 0.0
    h = get_scorer("hscore").fit(x1, y).score_
    assert get_scorer("regularized_hscore", ddof=0).fit(x1, y).score_ == pytest.approx(h, rel=1e-12)
    n = len(y)
    published = get_scorer("regularized_hscore").fit(x1, y).score_
    assert published == pytest.approx(h * n / (n - 1), rel=1e-12)


def test_regularized_hscore_is_stable_when_d_exceeds_n():
    X, y = make_data("features", 0, n_per_class=10, dim=200)
    noise, _ = make_data("features", 0, informative=False, n_per_class=10, dim=200)
    # plain H-score saturates at C - 1 for any features once D >= N
    assert get_scorer("hscore").fit(noise, y).score_ == pytest.approx(2.0, rel=1e-6)
    good = get_scorer("regularized_hscore").fit(X, y).score_
    bad = get_scorer("regularized_hscore").fit(noise, y).score_
    assert good > bad >= 0


# ----------------------------------------------------------------- LogME


def logme_algorithm1(F: np.ndarray, y: np.ndarray, tol: float = 1e-13) -> float:
    """Transcription of the paper's Algorithm 1, one class at a time, in a form that is safe for
    any features; stops when the evidence stops changing.

    ``A = alpha I + beta F^T F`` is never formed or solved: with the thin SVD ``F = U S V^T``
    (``r = min(N, D)`` directions, the paper's "optimized" line), ``A`` has eigenvalues
    ``alpha + beta s_i^2`` on the row space of ``F`` and ``alpha`` on the other ``D - r``
    directions, so ``m = beta V diag(s / (alpha + beta s^2)) U^T y`` and ``log det A`` is a sum
    of logs of positive numbers. Solving with ``A`` instead breaks down on the boundary
    ``beta -> inf`` (labels exactly linear in ``F``, always the case for D >= N): the condition
    number grows with ``beta`` until LAPACK reports a singular matrix, on some CPUs' kernels
    every time. ``N - gamma`` is summed from positive terms, not subtracted, for the same
    reason. The residual and ``||m||^2`` are computed from ``m`` directly.
    """
    n, d = F.shape
    U, s, Vt = np.linalg.svd(F, full_matrices=False)
    sigma = s**2  # the nonzero eigenvalues of F^T F (F has full rank here)
    r = len(s)
    scores = []
    for k in range(y.max() + 1):
        t = (y == k).astype(float)
        Ut = U.T @ t

        def evidence(alpha, beta):
            eig = alpha + beta * sigma  # eigenvalues of A on the row space; alpha elsewhere
            m = Vt.T @ (beta * s * Ut / eig)
            log_det_a = np.log(eig).sum() + (d - r) * np.log(alpha)
            value = (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
                     - beta / 2 * np.sum((F @ m - t) ** 2) - alpha / 2 * m @ m - log_det_a / 2)
            return m, value

        alpha, beta = 1.0, 1.0
        m, value = evidence(alpha, beta)
        for _ in range(2000):
            gamma = np.sum(beta * sigma / (alpha + beta * sigma))
            n_minus_gamma = (n - r) + np.sum(alpha / (alpha + beta * sigma))
            residual = max(np.sum((F @ m - t) ** 2), np.finfo(float).tiny)
            alpha, beta = gamma / (m @ m), n_minus_gamma / residual
            m, new = evidence(alpha, beta)
            if abs(new - value) < tol * n:
                value = new
                break
            value = new
        scores.append(value / n)
    return float(np.mean(scores))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n,d", [(60, 8), (30, 45)])
def test_logme_matches_algorithm1(seed, n, d):
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 3)
    F = rng.normal(size=(n, d)) + 0.7 * np.eye(3)[y] @ rng.normal(size=(3, d))
    expected = logme_algorithm1(F, y)
    assert get_scorer("logme").fit(F, y).score_ == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize("n,d", [(60, 8), (30, 45), (12, 200)])
def test_logme_reference_is_safe_for_any_seed(n, d):
    # D >= N puts the optimum on the boundary beta -> inf for every class, where solving with
    # A = alpha I + beta F^T F fails ("Singular matrix") for some seeds on some CPUs
    worst = 0.0
    for seed in range(25):
        rng = np.random.default_rng(seed)
        y = rng.permutation(np.arange(n) % 3)
        F = rng.normal(size=(n, d)) + 0.7 * np.eye(3)[y] @ rng.normal(size=(3, d))
        expected = logme_algorithm1(F, y)
        assert np.isfinite(expected), seed
        worst = max(worst, abs(get_scorer("logme").fit(F, y).score_ - expected) / abs(expected))
    assert worst < 1e-6


def test_logme_hand_value_all_zero_features():
    # no features: the evidence is that of y ~ N(0, I / beta) with beta = N / ||y||^2
    y = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    expected = np.mean([-0.5 * (np.log(2 * np.pi * c / 8) + 1) for c in (3, 5)])
    assert get_scorer("logme").fit(np.zeros((8, 4)), y).score_ == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_logme_finite_when_d_exceeds_n(seed):
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(100) % 5)
    noise = rng.normal(size=(100, 1280))
    informative = noise + 0.5 * np.eye(5)[y] @ rng.normal(size=(5, 1280))
    bad = get_scorer("logme").fit(noise, y).score_
    good = get_scorer("logme").fit(informative, y).score_
    assert np.isfinite(bad) and np.isfinite(good)
    assert good > bad
    # noise features explain nothing: close to the evidence without features
    no_features = get_scorer("logme").fit(np.zeros((100, 1)), y).score_
    assert abs(bad - no_features) < 0.1


@pytest.mark.slow
def test_logme_fast_on_large_input():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10_000, 1280)).astype(np.float32)
    y = rng.integers(0, 10, 10_000)
    start = time.perf_counter()
    assert np.isfinite(get_scorer("logme").fit(X, y).score_)
    assert time.perf_counter() - start < 20


# ----------------------------------------------------------------- probes


@pytest.mark.parametrize("seed", SEEDS)
def test_knn_matches_manual_cross_validation(seed):
    X, y = make_data("features", seed, informative=False)
    X[:, 0] += y  # a weak signal so accuracies vary between folds
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    accs = []
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    for train, test in cv.split(Xn, y):
        model = KNeighborsClassifier(n_neighbors=10).fit(Xn[train], y[train])
        accs.append(np.mean(model.predict(Xn[test]) == y[test]))
    assert get_scorer("knn").fit(X, y).score_ == pytest.approx(np.mean(accs), rel=1e-12)


@pytest.mark.parametrize("name", ["knn", "linear"])
def test_probes_cap_folds_and_k_for_tiny_classes(name):
    X, y = make_data("features", 0, n_per_class=2)  # 6 examples: 2 folds, 3 training each
    score = get_scorer(name, folds=10, **({"k": 50} if name == "knn" else {})).fit(X, y).score_
    assert 0.0 <= score <= 1.0


# ----------------------------------------------------------------- degenerate sets of scores

#: A value inside every scorer's range and at none of its bounds (for C = 3).
INSIDE = {"leep": -0.5, "nce": -0.5, "knn": 0.6, "linear": 0.6, "hscore": 1.2,
          "regularized_hscore": 1.2, "logme": 0.3}


def _hscore_candidates(dim: int, n_per_class: int = 5, n_classes: int = 7) -> tuple[dict, int]:
    """H-scores of random and of class-structured features (3 of each) on one target."""
    values = []
    for seed in range(3):
        for informative_ in (False, True):
            X, y = make_data("features", seed, informative=informative_, n_per_class=n_per_class,
                             n_classes=n_classes, dim=dim)
            values.append(get_scorer("hscore").fit(X, y).score_)
    return values, n_classes


@pytest.mark.parametrize("dim", [35, 512])  # N = 35 examples of 7 classes: D >= N - 1
def test_hscore_saturates_and_is_reported(dim):
    values, c = _hscore_candidates(dim)
    assert values == pytest.approx([c - 1] * len(values), rel=1e-9)  # noise and signal alike
    reason = get_scorer("hscore").degenerate(values, c)
    assert reason.startswith("hscore saturates at C-1 = 6 for every candidate; its feature "
                             "covariance is rank-deficient at this many examples")
    assert informative({"hscore": values + [None]}, c)["hscore"] == reason


def test_hscore_on_low_dimensional_features_is_informative():
    values, c = _hscore_candidates(dim=8, n_per_class=30)
    assert max(values) < c - 1.5 and len(set(values)) == len(values)
    assert get_scorer("hscore").degenerate(values, c) is None


def test_regularized_hscore_ranks_where_hscore_saturates():
    c = 7
    scores = {"hscore": [], "regularized_hscore": []}
    for informative_ in (False, True):
        X, y = make_data("features", 0, informative=informative_, n_per_class=5, n_classes=c,
                         dim=512)
        for name in scores:
            scores[name].append(get_scorer(name).fit(X, y).score_)
    reasons = informative(scores, c)
    assert reasons["hscore"] is not None and reasons["regularized_hscore"] is None
    assert scores["regularized_hscore"][1] > scores["regularized_hscore"][0]


@pytest.mark.parametrize("name", ALL)
def test_equal_values_are_degenerate(name):
    v = INSIDE[name]
    scorer = get_scorer(name)
    assert scorer.degenerate([v, v, v], 3) == (
        f"{name} gives the same value ({v:.6g}) for every candidate (3 scored), so it cannot "
        "rank them."
    )
    assert scorer.degenerate([v, v * (1 + 1e-9)], 3) is not None  # round-off is "the same"
    assert scorer.degenerate([v, v * (1 + 1e-3)], 3) is None
    assert scorer.degenerate(np.array([v, v + 0.1, v - 0.05]), 3) is None


@pytest.mark.parametrize("name", ALL)
def test_missing_values_are_ignored(name):
    v = INSIDE[name]
    scorer = get_scorer(name)
    reason = scorer.degenerate([None, v, float("nan"), v, None], 3)
    assert reason.startswith(f"{name} gives the same value")
    assert scorer.degenerate([None, v, None, v + 0.1, float("inf")], 3) is None
    assert scorer.degenerate([None, v], 3) is None  # one candidate: nothing to compare
    assert scorer.degenerate([None, None, float("nan")], 3) == (
        f"{name} scored no candidate (every value is missing or non-finite).")
    assert scorer.degenerate([], 3) is not None


def test_zero_is_a_degenerate_equal_value():
    # e.g. regularized_hscore when every source looks isotropic to Ledoit-Wolf (a = 1)
    assert "same value (0)" in get_scorer("regularized_hscore").degenerate([0.0, 0.0], 3)
    assert get_scorer("regularized_hscore").degenerate([0.0, 1e-3], 3) is None


@pytest.mark.parametrize("name", ["knn", "linear"])
def test_probe_bounds(name):
    scorer = get_scorer(name)
    top = scorer.degenerate([1.0, 1.0, None], 4)
    assert "reaches accuracy 1.0 (its maximum) for every candidate" in top
    chance = scorer.degenerate([0.25, 0.2, 0.1], 4)
    assert "at or below chance (1/C = 0.25) for every candidate" in chance
    assert scorer.degenerate([1.0, 0.95], 4) is None
    assert scorer.degenerate([0.25, 0.3], 4) is None
    assert "chance" in scorer.degenerate([0.5], 2)  # a single candidate at a bound is reported


@pytest.mark.parametrize("name", PROBA)
def test_leep_and_nce_bound_at_zero(name):
    # one-hot source outputs over more source classes than examples: each example has a source
    # class of its own, so both reach their maximum 0 whatever the labels
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)
    values = []
    for seed in range(3):
        P = np.eye(40)[np.random.default_rng(seed).permutation(40)[: len(y)]]
        values.append(get_scorer(name).fit(P, rng.permutation(y)).score_)
    assert values == pytest.approx([0.0] * 3, abs=1e-12)
    reason = get_scorer(name).degenerate(values, 3)
    assert f"{name} is 0 (its maximum) for every candidate" in reason
    assert get_scorer(name).degenerate([0.0, -0.3], 3) is None


def test_degenerate_checks_num_classes_and_names():
    with pytest.raises(ConfigError, match=r"`num_classes` must be an integer >= 2; got 1"):
        get_scorer("hscore").degenerate([1.0, 2.0], 1)
    with pytest.raises(UnknownNameError, match=r"Did you mean 'hscore'\?"):
        informative({"hscor": [1.0]}, 3)
    assert informative({}, 3) == {}
    reasons = informative({"logme": [0.1, 0.2], "knn": [0.9, 0.9]}, 3)
    assert list(reasons) == ["logme", "knn"] and reasons["logme"] is None
    assert reasons["knn"].startswith("knn gives the same value (0.9)")
