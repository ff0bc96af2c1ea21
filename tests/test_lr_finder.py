"""xviz.train.lr_finder: the exponential range test, smoothing, divergence, restoring, suggestions, plot."""

import copy
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xviz.errors import XvizError
from xviz.train.lr_finder import LRFinderResult, lr_find, plot_lr_find, suggest, valley_index


def blobs(n=256, spread=1.0, scale=1.0, seed=0):
    """Two 2-D Gaussian blobs at +-spread (class 0 and 1), times ``scale``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(n // 2, 2, generator=g) + spread, torch.randn(n // 2, 2, generator=g) - spread])
    y = torch.cat([torch.zeros(n // 2), torch.ones(n // 2)]).long()
    return x * scale, y


def loader_of(x, y, batch_size=32, shuffle=True):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


class Net(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Dropout -> Linear: buffers, a random layer and two modes to restore."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(2, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3))
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        return self.head(self.body(x))


class Stub(nn.Module):
    """One float64 parameter; the losses come from a stub loss function, not from the data (float64, so
    the scripted values pass through unrounded)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x):
        return self.w * x.sum()


ONE_BATCH = [(torch.ones(1, dtype=torch.float64), torch.zeros(1))]


def scripted_loss(values, seen=None):
    """A loss function returning ``values[k]`` on its k-th call (with a gradient path to the model)."""
    calls = iter(values)

    def loss_fn(out, target):
        value = next(calls)
        if seen is not None:
            seen.append(value)
        return out.sum() * 0.0 + value

    return loss_fn


def same_state(a: dict, b: dict) -> bool:
    """Nested equality where tensors must match bit for bit."""
    if type(a) is not type(b):
        return False
    if torch.is_tensor(a):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    return a == b


# --- the schedule --------------------------------------------------------------------------------

def test_lrs_are_exactly_exponential_and_used_by_the_optimizer():
    x, y = blobs()
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    used = []

    def loss_fn(out, target):
        used.append(optimizer.param_groups[0]["lr"])
        return nn.functional.cross_entropy(out, target)

    start, end, n = 1e-5, 1.0, 37
    result = lr_find(model, loader_of(x, y), optimizer, loss_fn=loss_fn, start_lr=start, end_lr=end, num_iter=n,
                     diverge=None, progress=False)
    assert isinstance(result, LRFinderResult) and not result.stopped_early
    assert len(result.lrs) == len(result.losses) == len(result.raw_losses) == n
    assert result.lrs[0] == start and result.lrs[-1] == end
    for i, lr in enumerate(result.lrs[1:-1], start=1):
        assert lr == start * (end / start) ** (i / (n - 1))
    assert np.allclose(np.diff(np.log(result.lrs)), math.log(end / start) / (n - 1), rtol=1e-10, atol=0)
    assert used == list(result.lrs)  # the lr each step really trained with
    assert optimizer.param_groups[0]["lr"] == 0.5  # put back


def test_loader_is_cycled_when_shorter_than_num_iter():
    x, y = blobs(n=64)
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = []

    def loss_fn(out, target):
        batches.append(len(target))
        return nn.functional.cross_entropy(out, target)

    result = lr_find(model, loader_of(x, y, batch_size=32), optimizer, loss_fn=loss_fn, num_iter=11,
                     diverge=None, progress=False)
    assert len(result.lrs) == 11 and batches == [32] * 11  # 2 batches per pass, cycled 5.5 times


def test_per_group_lr_ratios_are_kept_and_restored():
    model = Stub()
    extra = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    optimizer = torch.optim.SGD([{"params": [model.w], "lr": 0.1}, {"params": [extra], "lr": 0.01},
                                 {"params": [], "lr": 0.0}], lr=0.1)
    seen = []

    def loss_fn(out, target):
        seen.append([g["lr"] for g in optimizer.param_groups])
        return out.sum() * 0.0 + extra.sum() * 0.0 + 1.0

    result = lr_find(model, ONE_BATCH, optimizer, loss_fn=loss_fn, num_iter=20, progress=False)
    assert len(seen) == 20
    for lr, (first, second, third) in zip(result.lrs, seen):
        assert first == lr
        assert second == pytest.approx(0.1 * lr, rel=1e-12)
        assert third == 0.0
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.01, 0.0]


# --- putting everything back ---------------------------------------------------------------------

def warmed_up(seed=0):
    """A net with one BatchNorm in eval mode and an SGD optimizer with momentum buffers already."""
    x, y = blobs(seed=seed)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    for xb, yb in loader_of(x, y, shuffle=False):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        optimizer.step()
    model.train()
    model.body[1].eval()  # e.g. a frozen BatchNorm: its mode must survive too
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer, loader_of(x, y)


def test_weights_optimizer_state_modes_and_rng_are_restored_bit_for_bit():
    model, optimizer, loader = warmed_up()
    weights = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(optimizer.state_dict())
    modes = {name: m.training for name, m in model.named_modules()}
    twin, twin_opt, _ = warmed_up()  # the same starting point, never lr-found

    result = lr_find(model, loader, optimizer, num_iter=30, end_lr=1.0, progress=False)
    assert len(result.lrs) == 30

    assert same_state(model.state_dict(), weights)  # incl. BatchNorm running stats and num_batches_tracked
    assert same_state(optimizer.state_dict(), opt_state)  # momentum buffers and hyper-parameters
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(p.grad is None for p in model.parameters())
    # optimizer still drives the very same parameter objects
    assert all(p is q for p, q in zip(optimizer.param_groups[0]["params"], model.parameters()))

    # a training step afterwards (dropout draws random numbers) is exactly the step of the twin
    torch.manual_seed(123)
    for m, opt in ((model, optimizer), (twin, twin_opt)):
        state = torch.get_rng_state()
        xb, yb = next(iter(loader_of(*blobs(seed=5), shuffle=False)))
        opt.zero_grad()
        nn.functional.cross_entropy(m(xb), yb).backward()
        opt.step()
        torch.set_rng_state(state)
    assert same_state(model.state_dict(), twin.state_dict())


def test_random_state_is_restored():
    model, optimizer, loader = warmed_up()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    lr_find(model, loader, optimizer, num_iter=8, progress=False)  # shuffles and dropout draw numbers
    assert torch.equal(torch.rand(3), expected)


def test_everything_is_restored_when_the_test_raises():
    model, optimizer, loader = warmed_up()
    weights = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(optimizer.state_dict())
    modes = {name: m.training for name, m in model.named_modules()}
    calls = []

    def failing(out, target):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("boom in the middle")
        return nn.functional.cross_entropy(out, target)

    with pytest.raises(RuntimeError, match="boom"):
        lr_find(model, loader, optimizer, loss_fn=failing, num_iter=50, progress=False)
    assert same_state(model.state_dict(), weights)
    assert same_state(optimizer.state_dict(), opt_state)
    assert {name: m.training for name, m in model.named_modules()} == modes


def test_eval_mode_model_comes_back_in_eval_mode():
    model, optimizer, loader = warmed_up()
    model.eval()
    lr_find(model, loader, optimizer, num_iter=5, progress=False)
    assert not any(m.training for m in model.modules())


# --- smoothing and stopping ----------------------------------------------------------------------

def test_smoothing_is_the_debiased_ema_of_the_raw_losses():
    values = [float(v) for v in np.random.default_rng(0).uniform(0.5, 3.0, size=25)]
    smooth = 0.9
    result = lr_find(Stub(), ONE_BATCH, torch.optim.SGD(Stub().parameters(), lr=1.0),
                     loss_fn=scripted_loss(values), num_iter=25, smooth=smooth, diverge=None, progress=False)
    assert list(result.raw_losses) == values
    avg, expected = 0.0, []
    for i, loss in enumerate(values):
        avg = smooth * avg + (1 - smooth) * loss
        expected.append(avg / (1 - smooth ** (i + 1)))
    assert list(result.losses) == pytest.approx(expected, rel=1e-12)
    assert result.losses[0] == pytest.approx(values[0], rel=1e-12)  # debiased: the first point is the loss itself


def test_smoothing_zero_keeps_raw_losses():
    values = [3.0, 2.0, 2.5, 1.0, 1.5, 0.9]
    model = Stub()
    result = lr_find(model, ONE_BATCH, torch.optim.SGD(model.parameters(), lr=1.0), loss_fn=scripted_loss(values),
                     num_iter=6, smooth=0.0, diverge=None, progress=False)
    assert list(result.losses) == values


def test_divergence_stops_early_and_restores():
    # overlapping blobs with large inputs: from some learning rate on, SGD overshoots and the loss explodes
    x, y = blobs(spread=1.0, scale=5.0)
    torch.manual_seed(1)
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    weights = copy.deepcopy(model.state_dict())
    result = lr_find(model, loader_of(x, y), optimizer, end_lr=1e3, progress=False)
    assert result.stopped_early
    assert len(result.lrs) < 100 and result.lrs[-1] < 1e3
    assert result.losses[-1] > 4.0 * min(result.losses[:-1])  # what stopped it
    assert all(s <= 4.0 * min(result.losses[: i + 1]) for i, s in enumerate(result.losses[:-1]))  # not earlier
    assert result.valley < result.lrs[-1] and result.steep < result.lrs[-1]
    assert same_state(model.state_dict(), weights)


def test_non_finite_loss_stops_and_suggestions_stay_finite():
    values = [2.0 - 0.05 * i for i in range(20)] + [float("nan")] + [1.0] * 10
    model = Stub()
    result = lr_find(model, ONE_BATCH, torch.optim.SGD(model.parameters(), lr=1.0), loss_fn=scripted_loss(values),
                     num_iter=31, smooth=0.5, progress=False)
    assert result.stopped_early and len(result.lrs) == 21 and math.isnan(result.raw_losses[-1])
    assert all(math.isfinite(v) for v in (result.steep, result.valley, result.minimum))
    assert model.w.item() == 0.0


def test_a_constant_negative_loss_stops_at_the_first_step_and_says_why():
    model = Stub()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    with pytest.raises(XvizError) as err:  # -1 > 4 * -1: the divergence rule fires at once, as in fastai
        lr_find(model, ONE_BATCH, optimizer, loss_fn=scripted_loss([-1.0] * 20), num_iter=20, progress=False)
    message = str(err.value)
    assert "\n" not in message and "not finite" not in message
    assert "loss -1 is negative" in message and "diverge=None" in message
    assert model.w.item() == 0.0 and optimizer.param_groups[0]["lr"] == 1.0
    result = lr_find(model, ONE_BATCH, optimizer, loss_fn=scripted_loss([-1.0] * 20), num_iter=20, diverge=None,
                     progress=False)  # what the message advises
    assert not result.stopped_early and len(result.lrs) == 20
    falling = [1.0, 0.6, 0.3, 0.1, -0.1, -0.3, -0.5, -0.7]  # still falling, but below zero from step 4 on
    result = lr_find(model, ONE_BATCH, optimizer, loss_fn=scripted_loss(falling), num_iter=8, smooth=0.0,
                     progress=False)
    assert result.stopped_early and result.losses[-1] == -0.1  # stopped at the first negative loss, as documented


def test_too_few_points_say_which_step_failed():
    with pytest.raises(XvizError, match="not finite from the start"):
        suggest([1e-3, 1e-2], [float("nan"), 1.0])
    with pytest.raises(XvizError, match=r"not finite from the second step of the range test \(lr 0.01\)"):
        suggest([1e-3, 1e-2], [1.0, float("inf")])
    with pytest.raises(XvizError, match="recorded 1 step"):
        suggest([1e-3], [-1.0])


def test_a_full_run_without_divergence_is_not_stopped_early():
    values = [1.0 - 0.01 * i for i in range(40)]
    model = Stub()
    result = lr_find(model, ONE_BATCH, torch.optim.SGD(model.parameters(), lr=1.0), loss_fn=scripted_loss(values),
                     num_iter=40, progress=False)
    assert not result.stopped_early and len(result.lrs) == 40


# --- suggestions ---------------------------------------------------------------------------------

def synthetic_loss(lr):
    """Flat at 2 below 1e-3, falling (linearly in log lr) to 0.5 at 1e-1, then blowing up."""
    e = math.log10(lr)
    if e < -3:
        return 2.0
    if e < -1:
        return 2.0 - 1.5 * (e + 3) / 2
    return 0.5 * (lr / 0.1) ** 3


def test_suggestion_lies_in_the_descent_of_a_synthetic_curve():
    model = Stub()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    result = lr_find(model, ONE_BATCH, optimizer, progress=False,
                     loss_fn=lambda out, t: out.sum() * 0.0 + synthetic_loss(optimizer.param_groups[0]["lr"]))
    assert result.stopped_early
    assert result.suggestion == result.valley
    assert 1e-3 < result.valley < 1e-1
    assert 1e-3 < result.steep < 2e-1
    lowest = int(np.argmin(result.losses[: len(result.losses) - 5]))
    assert result.minimum == pytest.approx(result.lrs[lowest] / 10, rel=1e-12)
    # and on the unsmoothed curve itself
    lrs = [1e-7 * (1e8) ** (i / 99) for i in range(100)]
    losses = [synthetic_loss(lr) for lr in lrs]
    losses = losses[: next(i for i, v in enumerate(losses) if v > 4 * 0.5) + 1]
    steep, valley, minimum = suggest(lrs[: len(losses)], losses, 100)
    assert 1e-3 <= steep < 1e-1 and 1e-3 < valley < 1e-1
    assert 1e-3 / 10 < minimum < 1e-1 / 10  # the lowest point kept (the last 5 are left out, as in fastai)


def test_valley_is_fastais_longest_decreasing_subsequence():
    # longest strictly decreasing subsequence: 5, 4, 2, 1, 0.5 ends at index 6 with length 5, so
    # start = 6 - 5 = 1, L = 5, index = 1 + int(5/3) + int(5/6) = 2
    assert valley_index([3, 5, 4, 2, 6, 1, 0.5, 7]) == 2
    # strictly falling over 10 points: start = 9 - 10 = -1, L = 10, index = -1 + 3 + 1 = 3
    assert valley_index(np.linspace(10, 1, 10)) == 3
    # never falling: the first point, as in fastai
    assert valley_index([1, 2, 3, 4]) == 0 == fastai_valley_index([1, 2, 3, 4])
    assert valley_index([1, 1, 1, 1]) == 0 == fastai_valley_index([1, 1, 1, 1])


def fastai_valley_index(losses):
    """fastai's ``valley`` (fastai/callback/schedule.py), transcribed: the index it reads ``lrs[idx]`` at."""
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if (losses[i] < losses[j]) and (lds[i] < lds[j] + 1):
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


def test_valley_departs_from_fastai_only_where_its_docstring_says():
    # the documented case: the longest decreasing subsequence has length 2 and ends at index 1
    assert fastai_valley_index([2, 1, 3, 4]) == -1  # fastai reads lrs[-1]: the highest learning rate tried
    assert valley_index([2, 1, 3, 4]) == 0
    rng = np.random.default_rng(0)
    wrapped = 0
    for _ in range(3000):
        losses = list(rng.integers(0, 6, size=int(rng.integers(2, 9))).astype(float))  # short, ties: all shapes
        theirs = fastai_valley_index(losses)
        documented_case = valley_run_length(losses) == 2 and first_end_of_longest(losses) == 1
        assert (theirs == -1) == documented_case, losses
        assert valley_index(losses) == (0 if documented_case else theirs), losses
        wrapped += documented_case
    assert wrapped > 50  # common on short curves: the loop did test it


def valley_run_length(losses) -> int:
    """Length of the longest strictly decreasing subsequence (an independent O(n^2) count)."""
    best = [1] * len(losses)
    for i in range(len(losses)):
        best[i] = 1 + max([best[j] for j in range(i) if losses[j] > losses[i]], default=0)
    return max(best)


def first_end_of_longest(losses) -> int:
    """Where the first longest strictly decreasing subsequence ends."""
    return next(i for i in range(len(losses)) if valley_run_length(losses[: i + 1]) == valley_run_length(losses))


def test_steep_is_a_central_difference_where_fastai_uses_a_forward_one():
    """The documented difference: on a flat curve with a one-batch dip, then a steady descent, fastai's forward
    difference picks the dip; the central difference (numpy.gradient, torch-lr-finder's) the descent."""
    lrs = np.geomspace(1e-6, 1, 60)
    losses = 2.0 - 0.75 * (1 + np.tanh((np.arange(60) - 40) / 3))  # the real descent, steepest at step 40
    losses[15] -= 0.3                                                # one batch 0.3 below its neighbours
    steep, _, _ = suggest(lrs, losses, num_iter=0)  # on the points 0 .. 54 (the last 5 are left out)
    assert steep == lrs[40]
    assert int(np.argmin(np.gradient(losses[:55]))) == 40  # torch-lr-finder's rule on the same points agrees
    forward = (losses[1:55] - losses[:54]) / np.diff(np.log(lrs[:55]))  # fastai v2's `steep`, transcribed
    assert int(np.argmin(forward)) == 14                            # ... lands on the dip


def test_steep_is_the_most_negative_slope_in_log_lr():
    lrs = np.geomspace(1e-6, 1, 30)
    losses = 2.0 - np.tanh(np.log10(lrs) + 3)  # steepest at lr = 1e-3
    steep, _, minimum = suggest(lrs, losses, num_iter=0)  # no start skipped
    assert steep == pytest.approx(1e-3, rel=0.3)
    assert minimum == pytest.approx(lrs[len(lrs) - 6] / 10)  # the last 5 points are left out, as in fastai


def test_bad_arguments_are_one_line_errors():
    model = Stub()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    for kwargs in ({"start_lr": 1.0, "end_lr": 0.1}, {"start_lr": 0.0}, {"num_iter": 1}, {"smooth": 1.0},
                   {"diverge": 1.0}):
        with pytest.raises(XvizError) as err:
            lr_find(model, ONE_BATCH, optimizer, progress=False, **kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(XvizError, match="empty"):
        lr_find(model, [], optimizer, progress=False)
    assert optimizer.param_groups[0]["lr"] == 1.0


# --- the figure ----------------------------------------------------------------------------------

def test_plot_is_a_real_png(tmp_path):
    model = Stub()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    result = lr_find(model, ONE_BATCH, optimizer, progress=False,
                     loss_fn=lambda out, t: out.sum() * 0.0 + synthetic_loss(optimizer.param_groups[0]["lr"]))
    out = plot_lr_find(result, tmp_path / "sub" / "lr.png", title="synthetic curve")
    assert out == tmp_path / "sub" / "lr.png"
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width >= 500 and img.height >= 300
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 10  # something was drawn
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["lr.png"]  # no temporary left behind


def test_the_plot_limits_keep_the_raw_loss_in_view():
    """The per-batch loss dips below and spikes above the smoothed curve: the y range shows it all up to
    the smoothed minimum (after a divergence, the blow-up beyond it is still left out)."""
    from xviz.train.lr_finder import _loss_limits

    smoothed = np.array([2.0, 1.8, 1.5, 1.2, 1.0, 1.4, 3.0])
    raw = np.array([2.3, 1.6, 1.7, 0.9, 0.7, 2.5, 9.0])
    bottom, top = _loss_limits(smoothed, True, smoothed[[3, 4]], raw)
    assert bottom < 0.7 and top > 2.3
    assert top < 9.0  # the divergence after the minimum does not flatten the descent
    bottom, top = _loss_limits(smoothed, False, smoothed[[3, 4]], raw)
    assert bottom < 0.7 and top > 9.0
