"""Tests for transferkit.merging: interpolation, WiSE-FT search and model soups."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from transferkit.errors import ConfigError
from transferkit.merging import (
    DEFAULT_ALPHAS,
    check_compatible,
    greedy_soup,
    interpolate,
    mix_init,
    uniform_soup,
    wise_ft,
    wise_ft_per_group,
)

SEEDS = [0, 1, 2]
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def random_sd(seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "enc.0.weight": torch.randn(6, 4, generator=g).to(dtype),
        "enc.0.bias": torch.randn(6, generator=g).to(dtype),
        "enc.bn.running_mean": torch.randn(6, generator=g).to(dtype),
        "enc.bn.num_batches_tracked": torch.tensor(seed * 10 + 3),
        "head.weight": torch.randn(2, 6, generator=g).to(dtype),
        "head.bias": torch.randn(2, generator=g).to(dtype),
    }


def assert_sd_equal(x: dict, y: dict) -> None:
    assert list(x) == list(y)
    for k in x:
        assert x[k].dtype == y[k].dtype, k
        assert torch.equal(x[k], y[k]), k


def assert_independent(out: dict, inputs: list[dict]) -> None:
    """No output tensor shares memory with any input tensor."""
    ptrs = {t.untyped_storage().data_ptr() for sd in inputs for t in sd.values()}
    for k, t in out.items():
        assert t.untyped_storage().data_ptr() not in ptrs, k


# --------------------------------------------------------------------------- interpolate


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_endpoints_are_exact(seed, dtype):
    a, b = random_sd(seed, dtype), random_sd(seed + 100, dtype)
    assert_sd_equal(interpolate(a, b, 0.0), a)
    assert_sd_equal(interpolate(a, b, 1), b)
    assert_sd_equal(interpolate(a, b, {"": 0.0}), a)
    assert_sd_equal(interpolate(a, b, {"": 1.0}), b)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("alpha", [0.5, 0.3, 0.9])
def test_intermediate_alpha_matches_formula(seed, dtype, alpha):
    a, b = random_sd(seed, dtype), random_sd(seed + 100, dtype)
    out = interpolate(a, b, alpha)
    for k in a:
        assert out[k].dtype == a[k].dtype
        if not a[k].is_floating_point():
            assert torch.equal(out[k], b[k])
            continue
        expected = ((1 - alpha) * a[k].double() + alpha * b[k].double()).to(dtype)
        # arithmetic happens in float32 or wider: at most one rounding step of the output dtype
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(out[k], expected, rtol=2 * eps, atol=4 * eps)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(4096, generator=g).to(dtype)}
    b = {"w": torch.randn(4096, generator=g).to(dtype)}
    out = interpolate(a, b, 0.3)["w"]
    assert out.dtype == dtype
    assert torch.equal(out, torch.lerp(a["w"].float(), b["w"].float(), 0.3).to(dtype))
    # one rounding at the end beats the same formula evaluated in half precision
    exact = 0.7 * a["w"].double() + 0.3 * b["w"].double()
    naive = 0.7 * a["w"] + 0.3 * b["w"]
    err = (out.double() - exact).abs()
    assert err.mean() < (naive.double() - exact).abs().mean()


def test_identical_tensors_stay_identical():
    a = random_sd(0)
    out = interpolate(a, copy.deepcopy(a), 0.37)
    assert_sd_equal(out, a)


def test_per_group_alpha_longest_prefix_wins():
    a, b = random_sd(0), random_sd(1)
    out = interpolate(a, b, {"": 0.0, "enc.": 1.0, "enc.0.": 0.5})
    assert torch.equal(out["head.weight"], a["head.weight"])
    assert torch.equal(out["head.bias"], a["head.bias"])
    assert torch.equal(out["enc.bn.running_mean"], b["enc.bn.running_mean"])
    torch.testing.assert_close(out["enc.0.weight"], (a["enc.0.weight"] + b["enc.0.weight"]) / 2)
    # integer buffer with alpha 1 comes from b
    assert torch.equal(out["enc.bn.num_batches_tracked"], b["enc.bn.num_batches_tracked"])


def test_per_group_alpha_without_default_raises():
    a, b = random_sd(0), random_sd(1)
    with pytest.raises(ConfigError, match=r"no prefix matching.*'head\.weight'.*''"):
        interpolate(a, b, {"enc.": 0.5})
    # fine when every interpolated tensor is covered
    out = interpolate(a, b, {"enc.": 0.5, "head.": 0.0})
    assert torch.equal(out["head.weight"], a["head.weight"])


def test_per_group_alpha_out_of_range_names_the_prefix():
    a, b = random_sd(0), random_sd(1)
    with pytest.raises(ConfigError, match=r"`alpha\['head\.'\]`.*1\.5"):
        interpolate(a, b, {"": 0.5, "head.": 1.5})


def test_keys_restriction():
    a, b = random_sd(0), random_sd(1)
    out = interpolate(a, b, 0.0, keys=["head.weight", "enc.0.bias"])
    for k in a:
        expected = a[k] if k in ("head.weight", "enc.0.bias") else b[k]
        assert torch.equal(out[k], expected), k
    out = interpolate(a, b, 0.5, keys=iter(["head.bias"]))
    torch.testing.assert_close(out["head.bias"], (a["head.bias"] + b["head.bias"]) / 2)
    assert torch.equal(out["head.weight"], b["head.weight"])


def test_keys_restriction_errors():
    a, b = random_sd(0), random_sd(1)
    with pytest.raises(ConfigError, match=r"`keys`.*'nope'"):
        interpolate(a, b, 0.5, keys=["head.weight", "nope"])
    with pytest.raises(ConfigError, match=r"`keys`.*one string"):
        interpolate(a, b, 0.5, keys="head.weight")


@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_non_float_buffers(alpha):
    a, b = random_sd(0), random_sd(1)
    a["mask"], b["mask"] = torch.tensor([True, False]), torch.tensor([False, True])
    a["idx"], b["idx"] = torch.arange(3, dtype=torch.int32), torch.arange(3, 6, dtype=torch.int32)
    out = interpolate(a, b, alpha)
    src = a if alpha == 0.0 else b
    for k in ("enc.bn.num_batches_tracked", "mask", "idx"):
        assert out[k].dtype == a[k].dtype
        assert torch.equal(out[k], src[k]), k


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), True, "0.5", None])
def test_alpha_out_of_range(alpha):
    a, b = random_sd(0), random_sd(1)
    with pytest.raises(ConfigError, match=r"`alpha` must be a number in \[0, 1\]"):
        interpolate(a, b, alpha)


def test_alpha_error_shows_the_value():
    a, b = random_sd(0), random_sd(1)
    with pytest.raises(ConfigError, match=r"got 1\.5"):
        interpolate(a, b, 1.5)


# --------------------------------------------------------------------------- compatibility


def test_mismatched_shape_names_tensor_and_shapes():
    a, b = random_sd(0), random_sd(1)
    b["enc.0.weight"] = torch.randn(4, 6)
    with pytest.raises(ValueError, match=r"'enc\.0\.weight'.*\(6, 4\).*\(4, 6\)"):
        interpolate(a, b, 0.5)
    with pytest.raises(ValueError, match=r"'enc\.0\.weight'.*`zero`.*`tuned`"):
        check_compatible(a, b, names=("zero", "tuned"))


def test_missing_and_extra_keys_are_named():
    a, b = random_sd(0), random_sd(1)
    del b["head.bias"]
    b["head.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing from `b` \('head\.bias'\).*only in `b` "
                                         r"\('head\.extra'\)"):
        interpolate(a, b, 0.5)


def test_many_missing_keys_are_abbreviated():
    a = {f"k{i}": torch.zeros(1) for i in range(20)}
    with pytest.raises(ValueError, match=r"20 missing.*and 15 more"):
        check_compatible(a, {})


def test_mismatched_dtype_and_non_tensor():
    a, b = random_sd(0), random_sd(1, torch.float16)
    with pytest.raises(ValueError, match=r"'enc\.0\.weight'.*float32.*float16"):
        check_compatible(a, b)
    with pytest.raises(TypeError, match=r"`b\['x'\]`"):
        check_compatible({"x": torch.zeros(1)}, {"x": 1.0})


def test_compatible_dicts_pass():
    check_compatible(random_sd(0), random_sd(1))


# --------------------------------------------------------------------------- mix_init


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mix_init_endpoints(seed, dtype):
    source, fresh = random_sd(seed, dtype), random_sd(seed + 7, dtype)
    assert_sd_equal(mix_init(source, fresh, 0.0), source)
    assert_sd_equal(mix_init(source, fresh, 1.0), fresh)
    mid = mix_init(source, fresh, 0.25)
    assert_sd_equal(mid, interpolate(source, fresh, 0.25))


@pytest.mark.parametrize("beta", [-0.5, 1.5])
def test_mix_init_error_names_the_option(beta):
    with pytest.raises(ConfigError, match=rf"`--init-mix` must be .*got {beta}"):
        mix_init(random_sd(0), random_sd(1), beta)


def test_mix_init_mismatch_names_source_and_fresh():
    fresh = random_sd(1)
    fresh["head.weight"] = torch.zeros(3, 6)
    with pytest.raises(ValueError, match=r"'head\.weight'.*`source`.*`fresh`"):
        mix_init(random_sd(0), fresh, 0.5)


# --------------------------------------------------------------------------- no mutation


def test_inputs_are_never_mutated():
    sds = [random_sd(s, torch.float16) for s in range(4)]
    for sd in sds:
        for t in sd.values():
            t.requires_grad_(t.is_floating_point())
    before = copy.deepcopy(sds)

    outs = [
        interpolate(sds[0], sds[1], 0.0),
        interpolate(sds[0], sds[1], 1.0),
        interpolate(sds[0], sds[1], 0.5),
        interpolate(sds[0], sds[1], {"": 0.2, "head.": 1.0}, keys=["head.weight", "enc.0.bias"]),
        mix_init(sds[0], sds[1], 0.0),
        uniform_soup(sds),
        uniform_soup(sds[:1]),
        greedy_soup(sds, lambda sd: -float(sd["head.weight"].float().abs().sum())).state_dict,
        wise_ft(sds[0], sds[1], lambda sd: 1.0, alphas=[0.0, 1.0]).state_dict,
    ]
    for out in outs:
        assert_independent(out, sds)
        for t in out.values():
            assert not t.requires_grad
            t.zero_()  # must not reach the inputs
    for sd, old in zip(sds, before):
        assert_sd_equal(sd, old)


def test_evaluate_cannot_reach_the_inputs():
    a, b = random_sd(0), random_sd(1)
    before = copy.deepcopy((a, b))

    def vandal(sd):
        for t in sd.values():
            t.zero_()
        return 0.0

    wise_ft(a, b, vandal)
    greedy_soup([a, b], vandal)
    assert_sd_equal(a, before[0])
    assert_sd_equal(b, before[1])


# --------------------------------------------------------------------------- WiSE-FT


def toy_pair(dtype=torch.float64):
    zero = {"w": torch.zeros(5, dtype=dtype), "step": torch.tensor(0)}
    tuned = {"w": torch.ones(5, dtype=dtype), "step": torch.tensor(100)}
    return zero, tuned


@pytest.mark.parametrize("optimum", [0.3, 0.0, 0.7, 1.0])
def test_wise_ft_finds_known_optimum(optimum):
    zero, tuned = toy_pair()
    calls = []

    def evaluate(sd):
        calls.append(sd["w"].mean().item())
        return -abs(sd["w"].mean().item() - optimum)

    result = wise_ft(zero, tuned, evaluate)
    assert result.best_alpha == pytest.approx(optimum)
    assert result.best_score == pytest.approx(0.0, abs=1e-12)
    assert [a for a, _ in result.curve] == list(DEFAULT_ALPHAS)
    assert len(result.curve) == 11 and len(calls) == 11
    for alpha, score in result.curve:
        assert score == pytest.approx(-abs(alpha - optimum))
    assert_sd_equal(result.state_dict, interpolate(zero, tuned, result.best_alpha))


def test_wise_ft_ties_go_to_larger_alpha():
    zero, tuned = toy_pair()
    result = wise_ft(zero, tuned, lambda sd: 0.5, alphas=[0.2, 0.6, 0.4])
    assert result.best_alpha == 0.6
    assert [a for a, _ in result.curve] == [0.2, 0.4, 0.6]
    # a plateau: the largest alpha on it wins
    result = wise_ft(zero, tuned, lambda sd: min(0.5, float(sd["w"][0])))
    assert result.best_alpha == 1.0


def test_wise_ft_nan_scores_rank_last():
    zero, tuned = toy_pair()
    result = wise_ft(zero, tuned, lambda sd: 0.1 if sd["w"][0] < 0.15 else float("nan"))
    assert result.best_alpha == pytest.approx(0.1)


def test_wise_ft_keys_and_bad_alphas():
    zero, tuned = toy_pair()
    zero["v"], tuned["v"] = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    result = wise_ft(zero, tuned, lambda sd: -abs(float(sd["v"][0]) - 0.4), keys=["v"])
    assert result.best_alpha == pytest.approx(0.4)
    assert torch.equal(result.state_dict["w"], tuned["w"])
    with pytest.raises(ConfigError, match=r"`alphas\[1\]`.*got 2"):
        wise_ft(zero, tuned, lambda sd: 0.0, alphas=[0.5, 2])
    with pytest.raises(ConfigError, match="`alphas` is empty"):
        wise_ft(zero, tuned, lambda sd: 0.0, alphas=[])
    with pytest.raises(ConfigError, match="`alphas` must be a sequence"):
        wise_ft(zero, tuned, lambda sd: 0.0, alphas=0.5)


def test_wise_ft_per_group_improves_on_global():
    f64 = torch.float64
    zero = {"enc.w": torch.zeros(4, dtype=f64), "head.w": torch.zeros(2, dtype=f64),
            "other": torch.zeros(1, dtype=f64)}
    tuned = {k: torch.ones_like(v) for k, v in zero.items()}

    def evaluate(sd):
        return -abs(sd["enc.w"].mean().item() - 0.2) - abs(sd["head.w"].mean().item() - 0.7)

    glob = wise_ft(zero, tuned, evaluate)
    # flat between 0.2 and 0.7: ties go to the larger alpha
    assert glob.best_alpha == pytest.approx(0.7)
    result = wise_ft_per_group(zero, tuned, evaluate, {"enc": "enc.", "head": ["head.w"]})
    assert result.alphas == pytest.approx({"enc": 0.2, "head": 0.7})
    assert result.default_alpha == pytest.approx(0.7)
    assert result.best_score == pytest.approx(0.0, abs=1e-12)
    assert result.best_score > glob.best_score
    # 11 global evaluations, then 10 new ones per group
    assert len(result.curve) == 11 + 2 * 10
    assert result.curve[0] == ({"enc": 0.0, "head": 0.0}, pytest.approx(-0.9))
    expected = interpolate(zero, tuned, {"": 0.7, "enc.": 0.2, "head.w": 0.7})
    assert_sd_equal(result.state_dict, expected)
    torch.testing.assert_close(result.state_dict["other"], torch.full((1,), 0.7, dtype=f64))


def test_wise_ft_per_group_bad_groups():
    zero, tuned = toy_pair()
    ok = lambda sd: 0.0  # noqa: E731
    with pytest.raises(ConfigError, match=r"`groups\['g'\]` prefix 'enc\.' matches no tensor"):
        wise_ft_per_group(zero, tuned, ok, {"g": "enc."})
    with pytest.raises(ConfigError, match="in both"):
        wise_ft_per_group(zero, tuned, ok, {"g": "w", "h": ["w"]})
    with pytest.raises(ConfigError, match="non-empty mapping"):
        wise_ft_per_group(zero, tuned, ok, {})
    with pytest.raises(ConfigError, match="empty prefix"):
        wise_ft_per_group(zero, tuned, ok, {"g": ""})


# --------------------------------------------------------------------------- soups


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_uniform_soup_is_the_mean(seed, dtype):
    sds = [random_sd(seed * 10 + i, dtype) for i in range(4)]
    soup = uniform_soup(sds)
    for k in sds[0]:
        assert soup[k].dtype == sds[0][k].dtype
        if sds[0][k].is_floating_point():
            mean = torch.stack([sd[k].double() for sd in sds]).mean(0).to(dtype)
            eps = torch.finfo(dtype).eps
            torch.testing.assert_close(soup[k], mean, rtol=2 * eps, atol=4 * eps)
        else:
            assert torch.equal(soup[k], sds[0][k])
    assert_sd_equal(uniform_soup(sds[:1]), sds[0])
    assert_sd_equal(uniform_soup(iter(sds)), soup)  # any iterable works


def test_soup_errors_name_the_ingredient():
    sds = [random_sd(i) for i in range(3)]
    sds[2]["head.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"'head\.bias'.*`state_dicts\[0\]`.*`state_dicts\[2\]`"):
        uniform_soup(sds)
    with pytest.raises(ValueError, match=r"state_dicts\[2\]"):
        greedy_soup(sds, lambda sd: 0.0)
    with pytest.raises(ConfigError, match="empty"):
        uniform_soup([])
    with pytest.raises(ConfigError, match="not one state dict"):
        uniform_soup(sds[0])


@pytest.mark.parametrize("seed", SEEDS)
def test_greedy_soup_skips_garbage(seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(1000, generator=g)
    good = [{"w": target + 0.1 * torch.randn(1000, generator=g)} for _ in range(4)]
    garbage = {"w": 100 * torch.randn(1000, generator=g)}
    sds = good[:2] + [garbage] + good[2:]

    def evaluate(sd):
        return -float((sd["w"] - target).pow(2).sum())

    result = greedy_soup(sds, evaluate)
    assert 2 not in result.indices
    assert sorted(result.indices) == [0, 1, 3, 4]
    assert result.indices[0] == max(range(5), key=lambda i: result.ingredient_scores[i])
    assert result.ingredient_scores == [evaluate(sd) for sd in sds]
    assert result.score >= max(result.ingredient_scores)
    assert result.score == evaluate(result.state_dict)
    assert_sd_equal(result.state_dict, uniform_soup([sds[i] for i in result.indices]))
    # the uniform soup is dragged off by the garbage
    assert evaluate(uniform_soup(sds)) < result.score


def test_greedy_soup_single_ingredient():
    sd = random_sd(3)
    result = greedy_soup([sd], lambda s: 1.0)
    assert result.indices == [0] and result.score == 1.0
    assert_sd_equal(result.state_dict, sd)


# --------------------------------------------------------------------------- real tiny models


@pytest.fixture
def one_thread():
    """Tiny models train faster on one thread, and much faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_data(seed: int, n: int = 256):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 2] > 0).long()
    return x, y


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def train(model: nn.Module, x, y, seed: int, steps: int = 60, lr: float = 0.05) -> nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model


def accuracy_fn(x, y):
    model = make_model(0)

    def evaluate(sd):
        model.load_state_dict(sd)
        model.eval()
        with torch.no_grad():
            return (model(x).argmax(1) == y).float().mean().item()

    return evaluate


@pytest.mark.parametrize("seed", SEEDS)
def test_wise_ft_on_real_models(seed, one_thread):
    x_train, y_train = make_data(seed)
    x_val, y_val = make_data(seed + 1000)
    zero = make_model(seed)
    zero_sd = copy.deepcopy(zero.state_dict())
    tuned_sd = train(zero, x_train, y_train, seed).state_dict()
    evaluate = accuracy_fn(x_val, y_val)

    result = wise_ft(zero_sd, tuned_sd, evaluate)
    scores = dict(result.curve)
    assert scores[0.0] == evaluate(zero_sd)
    assert scores[1.0] == evaluate(tuned_sd) > 0.85
    assert result.best_score == max(scores.values()) >= scores[1.0]
    assert result.best_alpha >= 0.5  # the untrained model is near chance here
    assert evaluate(result.state_dict) == result.best_score
    # integer buffer from the fine-tuned model (alpha > 0)
    key = "1.num_batches_tracked"
    assert result.state_dict[key] == tuned_sd[key] == 60
    # the state dict loads into a real module
    make_model(0).load_state_dict(result.state_dict)


def test_soups_on_real_models(one_thread):
    x_train, y_train = make_data(0)
    x_val, y_val = make_data(1)
    base = make_model(0)
    init = copy.deepcopy(base.state_dict())
    ingredients = []
    for s, lr in enumerate([0.05, 0.02, 0.03]):
        model = make_model(0)
        model.load_state_dict(init)
        train(model, x_train, y_train, seed=s, lr=lr)
        ingredients.append(copy.deepcopy(model.state_dict()))
    g = torch.Generator().manual_seed(0)
    garbage = {k: (1e3 * torch.randn(v.shape, generator=g)).to(v.dtype) if v.is_floating_point()
               else v.clone() for k, v in init.items()}
    garbage["1.running_var"] = garbage["1.running_var"].abs()
    evaluate = accuracy_fn(x_val, y_val)

    sds = ingredients[:1] + [garbage] + ingredients[1:]
    result = greedy_soup(sds, evaluate)
    assert 1 not in result.indices
    assert result.score >= max(result.ingredient_scores) > 0.85
    assert evaluate(result.state_dict) == result.score
    soup = uniform_soup(ingredients)
    make_model(0).load_state_dict(soup)
    assert soup["1.num_batches_tracked"] == ingredients[0]["1.num_batches_tracked"]
