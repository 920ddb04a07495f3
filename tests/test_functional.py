"""Tests of the pure loss functions (factkeep.methods.functional): NLL, tempered KL, penalties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from factkeep.methods.functional import (
    IGNORE_INDEX,
    answer_mask,
    distillation_loss,
    ewc_penalty,
    grad_norm_matched_coefficient,
    kl_positions_mask,
    l2_to_anchor,
    masked_nll,
    shift_attention_mask,
    shift_for_next_token,
    tempered_kl,
)

LN = math.log


def _random_case(seed: int = 0, shape: tuple[int, int, int] = (3, 5, 11)):
    gen = torch.Generator().manual_seed(seed)
    student = (2 * torch.randn(shape, generator=gen)).requires_grad_(True)
    teacher = 2 * torch.randn(shape, generator=gen)
    mask = torch.rand(shape[:2], generator=gen) < 0.6
    mask[0, 0] = True
    return student, teacher, mask


# --- hand-computed KL ----------------------------------------------------------------------------

# Two selected positions with V = 3, plus a masked-out third position holding arbitrary logits.
# Position 1: teacher logits (ln 2, 0, 0), student logits (0, 0, 0).
# Position 2: teacher logits (0, 0, 0), student logits (ln 4, 0, 0).
HAND_TEACHER = [[LN(2), 0.0, 0.0], [0.0, 0.0, 0.0], [5.0, -3.0, 1.0]]
HAND_STUDENT = [[0.0, 0.0, 0.0], [LN(4), 0.0, 0.0], [-7.0, 2.0, 0.5]]
HAND_MASK = [True, True, False]

# tau = 1: p_T1 = (1/2, 1/4, 1/4), p_S1 = (1/3, 1/3, 1/3); p_T2 = (1/3, 1/3, 1/3),
# p_S2 = (2/3, 1/6, 1/6).
# tau = 0.5 (logits doubled): p_T1 = (2/3, 1/6, 1/6), p_S1 uniform; p_T2 uniform,
# p_S2 = (8/9, 1/18, 1/18).
HAND_CASES = [
    # (temperature, direction, expected mean KL over the two positions)
    (
        1.0,
        "forward",
        (
            (1 / 2 * LN((1 / 2) / (1 / 3)) + 2 * (1 / 4) * LN((1 / 4) / (1 / 3)))
            + (1 / 3 * LN((1 / 3) / (2 / 3)) + 2 * (1 / 3) * LN((1 / 3) / (1 / 6)))
        )
        / 2,
    ),
    (
        1.0,
        "reverse",
        (
            (1 / 3 * LN((1 / 3) / (1 / 2)) + 2 * (1 / 3) * LN((1 / 3) / (1 / 4)))
            + (2 / 3 * LN((2 / 3) / (1 / 3)) + 2 * (1 / 6) * LN((1 / 6) / (1 / 3)))
        )
        / 2,
    ),
    (
        0.5,
        "forward",
        (
            (2 / 3 * LN((2 / 3) / (1 / 3)) + 2 * (1 / 6) * LN((1 / 6) / (1 / 3)))
            + (1 / 3 * LN((1 / 3) / (8 / 9)) + 2 * (1 / 3) * LN((1 / 3) / (1 / 18)))
        )
        / 2,
    ),
    (
        0.5,
        "reverse",
        (
            (1 / 3 * LN((1 / 3) / (2 / 3)) + 2 * (1 / 3) * LN((1 / 3) / (1 / 6)))
            + (8 / 9 * LN((8 / 9) / (1 / 3)) + 2 * (1 / 18) * LN((1 / 18) / (1 / 3)))
        )
        / 2,
    ),
]


@pytest.mark.parametrize(("temperature", "direction", "expected"), HAND_CASES)
def test_tempered_kl_matches_hand_computation(temperature, direction, expected):
    student = torch.tensor([HAND_STUDENT])  # (1, 3, 3)
    teacher = torch.tensor([HAND_TEACHER])
    mask = torch.tensor([HAND_MASK])
    kl = tempered_kl(student, teacher, mask, temperature=temperature, direction=direction)
    assert kl.dtype == torch.float32
    assert kl.item() == pytest.approx(expected, rel=1e-6)
    loss = distillation_loss(student, teacher, mask, temperature=temperature, direction=direction)
    assert loss.item() == pytest.approx(temperature**2 * expected, rel=1e-6)


def test_top_k_renormalises_over_the_teachers_top_tokens():
    # Teacher logits (ln 3, ln 2, 0): top-2 = tokens 0 and 1, renormalised p_T = (3/5, 2/5).
    # Student logits (0, ln 2, 5): over tokens 0 and 1, p_S = (1/3, 2/3); its mass on token 2
    # is ignored.
    teacher = torch.tensor([[[LN(3), LN(2), 0.0]]])
    student = torch.tensor([[[0.0, LN(2), 5.0]]])
    mask = torch.tensor([[True]])
    forward = 3 / 5 * LN((3 / 5) / (1 / 3)) + 2 / 5 * LN((2 / 5) / (2 / 3))
    reverse = 1 / 3 * LN((1 / 3) / (3 / 5)) + 2 / 3 * LN((2 / 3) / (2 / 5))
    got_forward = tempered_kl(student, teacher, mask, top_k=2)
    got_reverse = tempered_kl(student, teacher, mask, direction="reverse", top_k=2)
    assert got_forward.item() == pytest.approx(forward, rel=1e-6)
    assert got_reverse.item() == pytest.approx(reverse, rel=1e-6)


def test_excluding_the_target_renormalises_over_the_other_tokens():
    # Position 1 excludes token 0 (its label). Teacher logits (ln 3, ln 2, 0, 0): without token 0,
    # p_T = (1/2, 1/4, 1/4) over tokens 1-3. Student logits (5, 0, ln 2, 0): p_S = (1/4, 1/2, 1/4).
    # Forward KL = 1/2 ln 2 + 1/4 ln(1/2) + 0 = ln(2) / 4.
    # Position 2 has no label (-100): the full KL of p_T = (2/5, 1/5, 1/5, 1/5) and a uniform p_S.
    teacher = torch.tensor([[[LN(3), LN(2), 0.0, 0.0], [LN(2), 0.0, 0.0, 0.0]]])
    student = torch.tensor([[[5.0, 0.0, LN(2), 0.0], [0.0, 0.0, 0.0, 0.0]]], requires_grad=True)
    mask = torch.tensor([[True, True]])
    exclude = torch.tensor([[0, IGNORE_INDEX]])
    first = LN(2) / 4
    second = 2 / 5 * LN((2 / 5) / (1 / 4)) + 3 * (1 / 5) * LN((1 / 5) / (1 / 4))
    kl = tempered_kl(student, teacher, mask, exclude=exclude)
    assert kl.item() == pytest.approx((first + second) / 2, rel=1e-6)
    # The excluded token gets no gradient: the student may raise its answer freely.
    (grad,) = torch.autograd.grad(kl, student)
    assert grad[0, 0, 0].item() == 0.0
    assert grad[0, 0, 1:].abs().sum().item() > 0
    assert torch.isfinite(grad).all()
    # ... and its logit does not change the value.
    moved = student.detach().clone()
    moved[0, 0, 0] = -20.0
    assert tempered_kl(moved, teacher, mask, exclude=exclude).item() == pytest.approx(kl.item())


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize(("top_k", "chunk_size"), [(None, None), (4, None), (None, 2)])
def test_exclude_without_targets_is_the_plain_kl_and_chunks_agree(direction, top_k, chunk_size):
    student, teacher, mask = _random_case(7)
    kwargs = {"temperature": 0.5, "direction": direction, "top_k": top_k}
    nothing = torch.full(mask.shape, IGNORE_INDEX)
    plain = tempered_kl(student, teacher, mask, **kwargs)
    assert tempered_kl(
        student, teacher, mask, exclude=nothing, chunk_size=chunk_size, **kwargs
    ).item() == pytest.approx(plain.item(), abs=1e-6)
    targets = torch.randint(
        0, student.shape[-1], mask.shape, generator=torch.Generator().manual_seed(0)
    )
    exact = tempered_kl(student, teacher, mask, exclude=targets, **kwargs)
    (exact_grad,) = torch.autograd.grad(exact, student)
    chunked = tempered_kl(student, teacher, mask, exclude=targets, chunk_size=chunk_size, **kwargs)
    (chunked_grad,) = torch.autograd.grad(chunked, student)
    assert abs(chunked.item() - exact.item()) < 1e-6
    torch.testing.assert_close(chunked_grad, exact_grad, rtol=0, atol=1e-6)
    assert exact.item() != pytest.approx(plain.item(), abs=1e-4)
    # The same distribution with itself is still at KL 0 after the exclusion.
    same = tempered_kl(teacher, teacher, mask, exclude=targets, **kwargs)
    assert same.item() == pytest.approx(0.0, abs=1e-6)


# --- properties -----------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize(("top_k", "chunk_size"), [(None, None), (4, None), (None, 2), (3, 1)])
@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_kl_of_a_distribution_with_itself_is_zero(direction, top_k, chunk_size, temperature):
    student, _, mask = _random_case(1)
    teacher = student.detach().clone()
    kl = tempered_kl(
        student,
        teacher,
        mask,
        temperature=temperature,
        direction=direction,
        top_k=top_k,
        chunk_size=chunk_size,
    )
    assert abs(kl.item()) < 1e-6
    kl.backward()
    assert student.grad is not None
    assert student.grad.abs().max().item() < 1e-6


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("top_k", [None, 3])
def test_masked_positions_contribute_nothing(direction, top_k):
    student, teacher, mask = _random_case(2)
    kl = tempered_kl(student, teacher, mask, temperature=2.0, direction=direction, top_k=top_k)
    kl.backward()
    assert student.grad is not None
    assert torch.all(student.grad[~mask] == 0)
    assert student.grad[mask].abs().sum() > 0

    noise = 10 * torch.randn(student.shape, generator=torch.Generator().manual_seed(2))
    other_student = torch.where(mask[..., None], student.detach(), noise)
    other_teacher = torch.where(mask[..., None], teacher, -noise)
    other = tempered_kl(
        other_student, other_teacher, mask, temperature=2.0, direction=direction, top_k=top_k
    )
    assert torch.equal(other, kl.detach())


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("top_k", [None, 4])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 100])
def test_chunked_equals_unchunked(direction, top_k, temperature, chunk_size):
    student, teacher, mask = _random_case(3)
    kwargs = {"temperature": temperature, "direction": direction, "top_k": top_k}
    exact = tempered_kl(student, teacher, mask, **kwargs)
    (exact_grad,) = torch.autograd.grad(exact, student)
    chunked = tempered_kl(student, teacher, mask, chunk_size=chunk_size, **kwargs)
    (chunked_grad,) = torch.autograd.grad(chunked, student)
    assert abs(chunked.item() - exact.item()) < 1e-6
    torch.testing.assert_close(chunked_grad, exact_grad, rtol=0, atol=1e-6)
    with torch.no_grad():
        no_grad = tempered_kl(student, teacher, mask, chunk_size=chunk_size, **kwargs)
    assert abs(no_grad.item() - exact.item()) < 1e-6


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_top_k_of_full_vocabulary_is_exact(direction):
    student, teacher, mask = _random_case(4)
    vocab = student.shape[-1]
    exact = tempered_kl(student, teacher, mask, temperature=1.5, direction=direction)
    full = tempered_kl(student, teacher, mask, temperature=1.5, direction=direction, top_k=vocab)
    bigger = tempered_kl(student, teacher, mask, temperature=1.5, direction=direction, top_k=99)
    assert full.item() == pytest.approx(exact.item(), abs=1e-6)
    assert bigger.item() == pytest.approx(exact.item(), abs=1e-6)


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_teacher_gets_no_gradient(chunk_size):
    student, teacher, mask = _random_case(5)
    teacher.requires_grad_(True)
    kl = tempered_kl(student, teacher, mask, direction="reverse", chunk_size=chunk_size)
    kl.backward()
    assert teacher.grad is None
    assert student.grad is not None


def test_low_precision_logits_are_upcast():
    student, teacher, mask = _random_case(6)
    half_student = student.detach().to(torch.bfloat16).requires_grad_(True)
    half_teacher = teacher.to(torch.bfloat16)
    kl = tempered_kl(half_student, half_teacher, mask, temperature=2.0)
    reference = tempered_kl(half_student.detach().float(), half_teacher.float(), mask, 2.0)
    assert kl.dtype == torch.float32
    assert kl.item() == pytest.approx(reference.item(), rel=1e-6)
    kl.backward()
    assert half_student.grad is not None and half_student.grad.dtype == torch.bfloat16


def test_empty_mask_gives_zero_with_a_gradient_path():
    student, teacher, _ = _random_case(7)
    mask = torch.zeros(student.shape[:2], dtype=torch.bool)
    for chunk_size in (None, 2):
        loss = distillation_loss(student, teacher, mask, temperature=2.0, chunk_size=chunk_size)
        assert loss.item() == 0.0
        assert loss.requires_grad
        (grad,) = torch.autograd.grad(loss, student)
        assert torch.equal(grad, torch.zeros_like(student))


def test_zero_weight_distillation_leaves_the_sft_loss_unchanged():
    student, teacher, mask = _random_case(8)
    gen = torch.Generator().manual_seed(8)
    labels = torch.randint(0, student.shape[-1], student.shape[:2], generator=gen)
    labels[~mask] = IGNORE_INDEX
    sft = masked_nll(student, labels)
    combined = masked_nll(student, labels) + 0.0 * distillation_loss(
        student, teacher, torch.ones_like(mask), temperature=2.0
    )
    assert torch.equal(combined, sft)


# --- masked NLL ----------------------------------------------------------------------------------


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.5])
def test_masked_nll_matches_cross_entropy(label_smoothing):
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(2, 6, 7, generator=gen)
    labels = torch.randint(0, 7, (2, 6), generator=gen)
    labels[0, :2] = IGNORE_INDEX
    labels[1, 4:] = IGNORE_INDEX
    got = masked_nll(logits, labels, label_smoothing=label_smoothing)
    expected = F.cross_entropy(
        logits.reshape(-1, 7),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
    )
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


def test_masked_nll_hand_value_and_bf16():
    # One target: logits (0, ln 3), label 1 -> -log(3/4).
    logits = torch.tensor([[[5.0, 5.0], [0.0, LN(3)]]])
    labels = torch.tensor([[IGNORE_INDEX, 1]])
    assert masked_nll(logits, labels).item() == pytest.approx(-LN(3 / 4), rel=1e-6)
    loss = masked_nll(logits.to(torch.bfloat16), labels)
    assert loss.dtype == torch.float32


def test_masked_nll_with_no_target_is_zero_with_a_gradient_path():
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    labels = torch.full((2, 3), IGNORE_INDEX)
    loss = masked_nll(logits, labels)
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))


# --- anchor penalties -----------------------------------------------------------------------------


def test_l2_to_anchor_hand_value():
    params = [
        torch.tensor([1.0, 2.0], requires_grad=True),
        torch.tensor([[3.0]], requires_grad=True),
    ]
    anchor = [torch.tensor([0.0, 0.0]), torch.tensor([[1.0]], requires_grad=True)]
    loss = l2_to_anchor(params, anchor)
    assert loss.item() == pytest.approx(1 + 4 + 4)
    loss.backward()
    assert torch.equal(params[0].grad, torch.tensor([2.0, 4.0]))
    assert torch.equal(params[1].grad, torch.tensor([[4.0]]))
    assert anchor[1].grad is None


def test_ewc_penalty_hand_value():
    params = [
        torch.tensor([1.0, 2.0], requires_grad=True),
        torch.tensor([[3.0]], requires_grad=True),
    ]
    anchor = [torch.tensor([0.0, 0.0]), torch.tensor([[1.0]])]
    fisher = [torch.tensor([0.5, 2.0]), torch.tensor([[3.0]])]
    loss = ewc_penalty(params, anchor, fisher)
    assert loss.item() == pytest.approx(0.5 * 1 + 2.0 * 4 + 3.0 * 4)
    loss.backward()
    assert torch.equal(params[0].grad, torch.tensor([2 * 0.5 * 1.0, 2 * 2.0 * 2.0]))


def test_penalties_reject_mismatched_inputs():
    params = [torch.zeros(2), torch.zeros(3)]
    with pytest.raises(ValueError):
        l2_to_anchor(params, [torch.zeros(2)])
    with pytest.raises(ValueError):
        l2_to_anchor(params, [torch.zeros(2), torch.zeros(4)])
    with pytest.raises(ValueError):
        ewc_penalty(params, [torch.zeros(2), torch.zeros(3)], [torch.zeros(2)])
    assert l2_to_anchor([], []).item() == 0.0


def test_grad_norm_matched_coefficient():
    assert grad_norm_matched_coefficient(3.0, 1.5) == pytest.approx(2.0)
    assert grad_norm_matched_coefficient(0.0, 1.5) == 0.0
    assert grad_norm_matched_coefficient(3.0, 0.0) == 0.0
    with pytest.raises(ValueError):
        grad_norm_matched_coefficient(-1.0, 1.0)
    with pytest.raises(ValueError):
        grad_norm_matched_coefficient(1.0, float("nan"))


# --- validation, shifting and masks ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"direction": "sideways"},
        {"temperature": 0.0},
        {"temperature": -1.0},
        {"top_k": 0},
        {"chunk_size": 0},
    ],
)
def test_tempered_kl_rejects_bad_arguments(kwargs):
    student, teacher, mask = _random_case(10)
    with pytest.raises(ValueError):
        tempered_kl(student, teacher, mask, **kwargs)
    with pytest.raises(ValueError):
        # Validation does not depend on the mask being non-empty.
        tempered_kl(student, teacher, torch.zeros_like(mask), **kwargs)


def test_tempered_kl_rejects_bad_shapes():
    student, teacher, mask = _random_case(11)
    with pytest.raises(ValueError):
        tempered_kl(student, teacher[:, :-1], mask)
    with pytest.raises(ValueError):
        tempered_kl(student, teacher, mask[:, :-1])


def test_shift_for_next_token():
    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(10).reshape(2, 5)
    shifted_logits, shifted_labels = shift_for_next_token(logits, labels)
    assert shifted_logits.shape == (2, 4, 7)
    assert shifted_labels.shape == (2, 4)
    assert torch.equal(shifted_logits, logits[:, :4])
    assert torch.equal(shifted_labels, labels[:, 1:])
    with pytest.raises(ValueError):
        shift_for_next_token(logits, labels[:, :4])


def test_shift_attention_mask_handles_both_paddings():
    right = torch.tensor([[1, 1, 1, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1]])
    assert shift_attention_mask(right).tolist() == [[True, True, False, False]]
    assert torch.equal(shift_attention_mask(right), right[:, 1:].bool())
    assert shift_attention_mask(left).tolist() == [[False, False, True, True]]


def test_kl_positions_mask():
    attention = torch.tensor([[1, 1, 1, 1, 0]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 4, 2, IGNORE_INDEX]])
    assert kl_positions_mask(attention, labels, "all").tolist() == [[True, True, True, True, False]]
    answer = kl_positions_mask(attention, labels, "answer")
    assert answer.tolist() == [[False, False, True, True, False]]
    assert torch.equal(answer, answer_mask(labels))
    prompt = kl_positions_mask(attention, labels, "prompt")
    assert prompt.tolist() == [[True, True, False, False, False]]
    with pytest.raises(ValueError):
        kl_positions_mask(attention, labels, "bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        kl_positions_mask(attention[:, :-1], labels, "all")
