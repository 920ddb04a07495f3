"""The cached top-k teacher: its KL against the exact KL, its lookups, its storage, its runs."""

from __future__ import annotations

import copy

import pytest
import torch

from factkeep.methods.functional import shift_for_next_token, tempered_kl
from factkeep.methods.teacher import Teacher
from factkeep.methods.teacher_cache import TeacherCache
from factkeep.methods.terms import KLToTeacher, LossContext
from factkeep.methods.topk_kl import cached_topk_kl, log1mexp, topk_targets
from factkeep.models.tiny import TinyModelConfig, build_tiny_model
from factkeep.models.tokenizer import build_word_tokenizer
from factkeep.training.examples import QACollator


def _logits(seed: int, shape=(2, 3, 7), scale: float = 2.0) -> torch.Tensor:
    return scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_with_k_equal_to_the_vocabulary_it_is_the_exact_kl(direction) -> None:
    student = _logits(0).requires_grad_(True)
    teacher = _logits(1)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    exact = tempered_kl(student, teacher, mask, 0.5, direction=direction)
    cached = cached_topk_kl(student, topk_targets(teacher, 0.5, k=7), mask, 0.5, direction)
    assert float(cached.detach()) == pytest.approx(float(exact.detach()), rel=1e-5, abs=1e-6)
    (g_exact,) = torch.autograd.grad(exact, student)
    (g_cached,) = torch.autograd.grad(cached, student)
    torch.testing.assert_close(g_cached, g_exact, rtol=1e-4, atol=1e-6)


def test_truncated_kl_is_a_lower_bound_that_grows_with_k() -> None:
    student, teacher = _logits(2), _logits(3)
    mask = torch.ones(2, 3, dtype=torch.bool)
    exact = float(tempered_kl(student, teacher, mask, 1.0))
    values = [float(cached_topk_kl(student, topk_targets(teacher, 1.0, k), mask, 1.0)) for k in
              (1, 3, 5, 7)]  # fmt: skip
    assert all(v <= exact * (1 + 1e-5) for v in values)
    assert values == sorted(values)
    assert values[-1] == pytest.approx(exact, rel=1e-5)


def test_two_token_hand_computed_case() -> None:
    # Teacher p = (0.5, 0.3, 0.2) at tau=1, k=1: buckets (0.5, 0.5). Student q = (0.25, 0.25, 0.5):
    # buckets (0.25, 0.75). KL = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75).
    teacher = torch.log(torch.tensor([[[0.5, 0.3, 0.2]]]))
    student = torch.log(torch.tensor([[[0.25, 0.25, 0.5]]]))
    mask = torch.ones(1, 1, dtype=torch.bool)
    value = cached_topk_kl(student, topk_targets(teacher, 1.0, k=1), mask, 1.0)
    expected = 0.5 * torch.log(torch.tensor(2.0)) + 0.5 * torch.log(torch.tensor(0.5 / 0.75))
    assert float(value) == pytest.approx(float(expected), rel=1e-6)
    same = cached_topk_kl(teacher, topk_targets(teacher, 1.0, k=2), mask, 1.0)
    assert float(same) == pytest.approx(0.0, abs=1e-7)


def test_log1mexp_is_accurate_at_both_ends_and_floored() -> None:
    x = torch.tensor([-1e-8, -0.5, -30.0, 0.0])
    out = log1mexp(x)
    assert float(out[0]) == pytest.approx(float(torch.log(torch.tensor(1e-8))), rel=1e-4)
    assert float(out[1]) == pytest.approx(float(torch.log(1 - torch.exp(torch.tensor(-0.5)))))
    assert float(out[2]) == pytest.approx(-9.36e-14, rel=1e-2)
    assert float(out[3]) == -80.0


def test_masked_positions_contribute_nothing_and_chunking_changes_nothing() -> None:
    student = _logits(4, (3, 5, 11)).requires_grad_(True)
    teacher = _logits(5, (3, 5, 11))
    targets = topk_targets(teacher, 0.5, k=4)
    mask = torch.rand(3, 5, generator=torch.Generator().manual_seed(0)) > 0.4
    whole = cached_topk_kl(student, targets, mask, 0.5)
    chunked = cached_topk_kl(student, targets, mask, 0.5, chunk_size=2)
    assert float(chunked) == pytest.approx(float(whole), rel=1e-6)
    (grad,) = torch.autograd.grad(whole, student)
    assert torch.all(grad[~mask] == 0)
    assert torch.all(grad[mask].abs().sum(-1) > 0)


@pytest.fixture(scope="module")
def tiny():
    tok = build_word_tokenizer(["q : where was ann bob born ? a : paris rome oslo lima"])
    shape = TinyModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    return build_tiny_model(shape, tok, seed=0), tok


def _examples(tok) -> list[dict]:
    texts = ["Q: where was ann born ? A: paris", "Q: where was bob born ? A: oslo lima"]
    out = []
    for t in texts:
        ids = tok(t)["input_ids"] + [tok.eos_token_id]
        out.append({"input_ids": ids, "labels": [-100] * 8 + ids[8:]})
    return out


def test_cached_loss_matches_the_exact_loss_on_a_tiny_model(tiny, tmp_path) -> None:
    model, tok = tiny
    teacher = Teacher(copy.deepcopy(model))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in teacher.model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen).to(p))
    examples = _examples(tok)
    vocab = model.config.vocab_size
    cache = TeacherCache.build(
        teacher, [e["input_ids"] for e in examples], 0.5, k=vocab, progress=False
    )
    assert teacher.forward_calls == 1
    cache.save(tmp_path / "c.safetensors")
    cache = TeacherCache.load(tmp_path / "c.safetensors")
    # A batch in another order, with padding: the lookup finds each sequence's rows.
    batch = QACollator(tok.pad_token_id)([examples[1], examples[0]])
    logits, labels = shift_for_next_token(
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
        batch["labels"],
    )

    def ctx(with_cache: bool) -> LossContext:
        return LossContext(
            model,
            logits,
            labels,
            batch["attention_mask"][:, 1:],
            lambda: teacher.logits(batch["input_ids"], batch["attention_mask"])[:, :-1],
            (lambda: cache.lookup(batch["input_ids"], batch["attention_mask"]))
            if with_cache
            else None,
        )

    exact = KLToTeacher(weight=1.0, temperature=0.5)(ctx(False))
    cached_term = KLToTeacher(weight=1.0, temperature=0.5, cached=True)
    assert not cached_term.needs_teacher
    calls = teacher.forward_calls
    cached = cached_term(ctx(True))
    assert teacher.forward_calls == calls  # the cached term never runs the teacher
    assert float(exact) > 0.01
    assert float(cached) == pytest.approx(float(exact), rel=2e-3)  # float16 log-probs
    with pytest.raises(KeyError, match="not in the teacher cache"):
        other = QACollator(tok.pad_token_id)([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}])
        cache.lookup(other["input_ids"], other["attention_mask"])


@pytest.mark.parametrize("k", [3, 7])
def test_gradients_stay_finite_when_the_student_is_certain(k) -> None:
    # A student putting all its mass on the teacher's top tokens: its tail underflows to 0.
    teacher = _logits(6)
    student = (100.0 * torch.nn.functional.one_hot(teacher.argmax(-1), 7).float()).requires_grad_()
    mask = torch.ones(2, 3, dtype=torch.bool)
    for direction in ("forward", "reverse"):
        value = cached_topk_kl(student, topk_targets(teacher, 0.5, k), mask, 0.5, direction)
        (grad,) = torch.autograd.grad(value, student)
        assert torch.isfinite(value) and torch.isfinite(grad).all()


@pytest.mark.parametrize("chunk", [None, 2])
def test_the_fused_kl_has_the_autograd_value_and_gradient(chunk) -> None:
    base = _logits(7, (3, 6, 13)).requires_grad_(True)
    student = base[:, :-1]  # a non-contiguous view, as the trainer's shifted logits are
    targets = topk_targets(_logits(8, (3, 5, 13)), 0.5, k=4)
    mask = torch.rand(3, 5, generator=torch.Generator().manual_seed(1)) > 0.3
    fused = cached_topk_kl(student, targets, mask, 0.5, chunk_size=chunk)
    plain = cached_topk_kl(student, targets, mask, 0.5, chunk_size=chunk, fused=False)
    assert float(fused.detach()) == pytest.approx(float(plain.detach()), rel=1e-6)
    (g_fused,) = torch.autograd.grad(3.0 * fused, base)
    (g_plain,) = torch.autograd.grad(3.0 * plain, base)
    torch.testing.assert_close(g_fused, g_plain, rtol=1e-5, atol=1e-7)
    assert torch.all(g_fused[:, -1] == 0)


def test_fused_gradient_stays_bounded_when_the_student_tail_is_tiny_and_the_teachers_is_not() -> (
    None
):
    # The student puts all but ~1e-9 of its mass on the teacher's top token; the teacher keeps
    # 30% outside its top-1: the exact tail keeps the gradient within [-1, 1] / (N τ).
    vocab = 50
    student = torch.full((1, 1, vocab), -21.0)
    student[0, 0, 0] = 0.0
    student.requires_grad_(True)
    teacher = torch.log(torch.tensor([0.7] + [0.3 / (vocab - 1)] * (vocab - 1)))[None, None]
    mask = torch.ones(1, 1, dtype=torch.bool)
    value = cached_topk_kl(student, topk_targets(teacher, 1.0, k=1), mask, 1.0)
    (grad,) = torch.autograd.grad(value, student)
    plain = cached_topk_kl(student, topk_targets(teacher, 1.0, k=1), mask, 1.0, fused=False)
    (grad_plain,) = torch.autograd.grad(plain, student)
    assert torch.isfinite(grad).all() and grad.abs().max() <= 1.0
    torch.testing.assert_close(grad, grad_plain, rtol=1e-3, atol=1e-6)
