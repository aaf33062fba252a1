"""Logit distillation losses against hand-written numpy and PyTorch."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mbert_jax.losses import (
    kl_divergence,
    mlm_loss,
    pretraining_distillation_loss,
    soft_cross_entropy,
)

RNG = np.random.default_rng(1)
STUDENT = RNG.normal(size=(2, 4, 6)).astype(np.float32) * 2
TEACHER = RNG.normal(size=(2, 4, 6)).astype(np.float32) * 2
MASK = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32)  # per-token logits with padding


def np_softmax(row, t):
    row = [v / t for v in row]
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def np_logit_loss(student, teacher, mask, t, kind, t2):
    total = count = 0.0
    for b in range(student.shape[0]):
        for i in range(student.shape[1]):
            if mask[b, i] == 0:
                continue
            ps = np_softmax(student[b, i].astype(np.float64), t)
            pt = np_softmax(teacher[b, i].astype(np.float64), t)
            if kind == "ce":
                value = -sum(p * math.log(q) for p, q in zip(pt, ps))
            else:
                value = sum(p * (math.log(p) - math.log(q)) for p, q in zip(pt, ps))
            total += mask[b, i] * value * (t * t if t2 else 1.0)
            count += mask[b, i]
    return total, count


@pytest.mark.parametrize("fn,kind", [(soft_cross_entropy, "ce"), (kl_divergence, "kl")])
@pytest.mark.parametrize("t,t2", [(1.0, False), (2.0, True), (3.0, False)])
def test_matches_numpy(fn, kind, t, t2):
    loss = fn(
        jnp.asarray(STUDENT),
        jnp.asarray(TEACHER),
        temperature=t,
        weights=jnp.asarray(MASK),
        scale_by_temperature_squared=t2,
    )
    total, count = np_logit_loss(STUDENT, TEACHER, MASK, t, kind, t2)
    np.testing.assert_allclose(loss.total, total, rtol=1e-5)
    np.testing.assert_allclose(loss.count, count)


def test_distilbert_kl_matches_torch():
    # DistilBERT: masked_select real tokens, KLDivLoss(batchmean) * T^2.
    t = 2.0
    sel = torch.tensor(MASK).bool()
    s = torch.tensor(STUDENT)[sel]
    te = torch.tensor(TEACHER)[sel]
    ref = torch.nn.functional.kl_div(
        torch.log_softmax(s / t, -1), torch.softmax(te / t, -1), reduction="batchmean"
    ) * (t**2)
    loss = kl_divergence(
        jnp.asarray(STUDENT),
        jnp.asarray(TEACHER),
        temperature=t,
        weights=jnp.asarray(MASK),
        scale_by_temperature_squared=True,
    )
    np.testing.assert_allclose(loss.mean(), ref.item(), rtol=1e-5)


def test_soft_cross_entropy_matches_torch_probability_targets():
    s = torch.tensor(STUDENT).reshape(-1, 6)
    te = torch.tensor(TEACHER).reshape(-1, 6)
    ref = torch.nn.functional.cross_entropy(s / 2.0, torch.softmax(te / 2.0, -1))
    loss = soft_cross_entropy(jnp.asarray(STUDENT), jnp.asarray(TEACHER), temperature=2.0)
    np.testing.assert_allclose(loss.mean(), ref.item(), rtol=1e-5)


def test_padding_and_teacher_gradient():
    base = kl_divergence(jnp.asarray(STUDENT), jnp.asarray(TEACHER), weights=jnp.asarray(MASK))
    s, te = STUDENT.copy(), TEACHER.copy()
    s[1, 3], te[0, 3] = 50.0 * RNG.normal(size=6), -1e30
    other = kl_divergence(jnp.asarray(s), jnp.asarray(te), weights=jnp.asarray(MASK))
    np.testing.assert_array_equal(base.total, other.total)
    # The teacher receives no gradient; the student's is finite, 0 at padding.
    fn = lambda a, b: kl_divergence(a, b, weights=jnp.asarray(MASK)).mean()
    gs, gt = jax.grad(fn, argnums=(0, 1))(jnp.asarray(s), jnp.asarray(te))
    assert np.all(np.asarray(gt) == 0)
    assert np.all(np.isfinite(gs)) and np.all(np.asarray(gs)[1, 3] == 0)


def test_extreme_teacher_logits_stay_finite():
    # A teacher that puts exactly zero probability somewhere (dtype-min logits).
    te = TEACHER.copy()
    te[..., 0] = np.finfo(np.float32).min
    for fn in (kl_divergence, soft_cross_entropy):
        val, grad = jax.value_and_grad(lambda a, fn=fn: fn(a, jnp.asarray(te)).mean())(
            jnp.asarray(STUDENT, jnp.bfloat16)
        )
        assert np.isfinite(val) and np.all(np.isfinite(np.asarray(grad, np.float32)))


LABELS = np.array([[2, 0, 5, -100], [1, 4, -100, -100]])


def np_pd(student, teacher, labels, weights, r):
    total = count = 0.0
    for b in range(student.shape[0]):
        for i in range(student.shape[1]):
            if weights[b, i] == 0:
                continue
            ps = np_softmax(student[b, i].astype(np.float64), 1.0)
            pt = np_softmax(teacher[b, i].astype(np.float64), 1.0)
            target = [(1 - r) * p for p in pt]
            target[labels[b, i]] += r
            total += weights[b, i] * -sum(y * math.log(q) for y, q in zip(target, ps))
            count += weights[b, i]
    return total, count


@pytest.mark.parametrize("r", [0.5, 0.2])
def test_pretraining_distillation_matches_numpy(r):
    loss = pretraining_distillation_loss(
        jnp.asarray(STUDENT),
        jnp.asarray(TEACHER),
        jnp.asarray(LABELS),
        jnp.asarray(MASK),
        ground_truth_ratio=r,
    )
    total, count = np_pd(STUDENT, TEACHER, LABELS, MASK, r)
    np.testing.assert_allclose(loss.total, total, rtol=1e-5)
    np.testing.assert_allclose(loss.count, count)


def test_pretraining_distillation_limits_and_torch():
    args = (jnp.asarray(STUDENT), jnp.asarray(TEACHER), jnp.asarray(LABELS), jnp.asarray(MASK))
    hard = pretraining_distillation_loss(*args, ground_truth_ratio=1.0)
    ref = mlm_loss(args[0], args[2], args[3])
    np.testing.assert_allclose(hard.total, ref.total, rtol=1e-6)
    soft = pretraining_distillation_loss(*args, ground_truth_ratio=0.0)
    np.testing.assert_allclose(
        soft.total, soft_cross_entropy(args[0], args[1], weights=args[3]).total, rtol=1e-6
    )
    # PyTorch: cross_entropy with the mixed probability target, on the real predictions.
    sel = torch.tensor(MASK).bool()
    target = 0.5 * torch.nn.functional.one_hot(torch.tensor(LABELS)[sel], 6).float()
    target = target + 0.5 * torch.softmax(torch.tensor(TEACHER)[sel], -1)
    ref = torch.nn.functional.cross_entropy(torch.tensor(STUDENT)[sel], target)
    mixed = pretraining_distillation_loss(*args)
    np.testing.assert_allclose(mixed.mean(), ref.item(), rtol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        kl_divergence(jnp.zeros((2, 3)), jnp.zeros((2, 3)), temperature=0.0)
    with pytest.raises(ValueError, match="student shape"):
        soft_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="weights shape"):
        soft_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 3)), weights=jnp.ones((3,)))
