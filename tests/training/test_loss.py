"""Soft-Dice loss: the paper's formula over the whole batch, its gradient, and the hard Dice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.loss import DICE_EPS, DiceBCELoss, SoftDiceLoss, dice_per_frame, make_loss, soft_dice_loss


def test_soft_dice_matches_hand_computation_over_the_batch():
    p = torch.tensor([[[[0.9, 0.2], [0.6, 0.0]]], [[[0.1, 0.3], [0.0, 0.0]]]])
    y = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]], [[[0.0, 1.0], [0.0, 0.0]]]])
    # sum(y*p) = 0.9 + 0.6 + 0.3 = 1.8; sum(y) = 3; sum(p) = 2.1
    expected = 1 - (2 * 1.8 + 1e-7) / (3 + 2.1 + 1e-7)
    assert DICE_EPS == 1e-7
    assert soft_dice_loss(p, y).item() == pytest.approx(expected, abs=1e-7)
    # One ratio per batch, not the mean of per-frame ratios.
    per_frame = np.mean([soft_dice_loss(p[i], y[i]).item() for i in range(2)])
    assert abs(per_frame - expected) > 0.05


def test_soft_dice_extremes_and_shape_check():
    y = torch.zeros(2, 1, 4, 4)
    y[:, :, 1:3, 1:3] = 1
    assert soft_dice_loss(y.clone(), y).item() == pytest.approx(0.0, abs=1e-7)
    assert soft_dice_loss(1 - y, y).item() == pytest.approx(1.0, abs=1e-7)
    empty = torch.zeros(1, 1, 4, 4)
    assert soft_dice_loss(empty, empty).item() == pytest.approx(0.0, abs=1e-7)  # eps/eps
    with pytest.raises(ValueError, match="shape"):
        soft_dice_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))


def test_gradient_matches_the_analytic_derivative():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(2, 1, 5, 5) > 0.5).double()
    SoftDiceLoss()(logits, y).backward()
    p = torch.sigmoid(logits.detach())
    inter, total = (p * y).sum(), y.sum() + p.sum()
    # L = 1 - (2I + e)/(S + e):  dL/dp = -(2y (S + e) - (2I + e)) / (S + e)^2;  dp/dz = p(1 - p)
    dldp = -(2 * y * (total + DICE_EPS) - (2 * inter + DICE_EPS)) / (total + DICE_EPS) ** 2
    expected = dldp * p * (1 - p)
    assert torch.allclose(logits.grad, expected, atol=1e-6)
    assert torch.autograd.gradcheck(lambda z: SoftDiceLoss()(z, y), (logits,))


def test_hard_dice_per_frame():
    y = torch.zeros(3, 1, 4, 4)
    y[0, :, :2, :] = 1  # 8 pixels
    y[1, :, :, :1] = 1  # 4 pixels
    logits = torch.full((3, 1, 4, 4), -5.0)
    logits[0, :, :2, :2] = 5  # 4 of 8 predicted -> 2*4/(4+8)
    logits[1] = torch.where(y[1] > 0, 5.0, -5.0)  # perfect
    dice = dice_per_frame(logits, y)
    assert dice[0].item() == pytest.approx(8 / 12, abs=1e-6)
    assert dice[1].item() == pytest.approx(1.0, abs=1e-6)
    assert dice[2].item() == pytest.approx(1.0, abs=1e-6)  # empty prediction of an empty mask
    # sigmoid(5) = 0.993: above a 0.9999 threshold nothing is predicted.
    assert dice_per_frame(logits, y, threshold=0.9999)[0].item() == pytest.approx(0.0, abs=1e-6)


def test_dice_bce_adds_the_pixel_cross_entropy_and_charges_an_outline_on_an_empty_frame():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8)
    target = torch.zeros(2, 1, 8, 8)
    target[0, :, 2:6, 2:6] = 1.0  # frame 1 has no root (before the injection)
    p = torch.sigmoid(logits)
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    assert float(DiceBCELoss()(logits, target)) == pytest.approx(float(soft_dice_loss(p, target) + bce), rel=1e-5)
    # an outline on the empty frame: cross-entropy charges its pixels on top of the batch ratio
    clean = torch.where(target > 0, 6.0, -6.0)
    outlined = clean.clone()
    outlined[1, :, 2:6, 2:6] = 6.0
    extra_dice = float(SoftDiceLoss()(outlined, target) - SoftDiceLoss()(clean, target))
    extra_both = float(DiceBCELoss()(outlined, target) - DiceBCELoss()(clean, target))
    assert extra_both > extra_dice + 0.09  # 16 of 128 pixels wrong at logit 6: +0.75 cross-entropy


def test_make_loss_by_name():
    assert isinstance(make_loss("dice"), SoftDiceLoss) and isinstance(make_loss("dice_bce"), DiceBCELoss)
    with pytest.raises(ValueError, match="unknown loss 'focal'; known: dice, dice_bce"):
        make_loss("focal")
