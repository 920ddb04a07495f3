"""Loss terms on a tiny model, the Fisher estimate, replay mixing, checkpoints and forgetting."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from factkeep.methods.ewc import diagonal_fisher
from factkeep.methods.functional import masked_nll, shift_for_next_token
from factkeep.methods.teacher import Teacher
from factkeep.methods.terms import KLToTeacher, L2ToAnchor, LossContext, NLLTerm
from factkeep.models.tiny import TinyModelConfig, build_tiny_model
from factkeep.models.tokenizer import build_word_tokenizer
from factkeep.training.examples import QADataset, ReplayMix
from factkeep.training.run import last_complete_checkpoint
from factkeep.training.summary import absolute_decline, forgetting, summarize_run


@pytest.fixture(scope="module")
def tiny():
    tok = build_word_tokenizer(["q : where was ann born ? a : paris rome oslo lima"])
    shape = TinyModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    return build_tiny_model(shape, tok, seed=0), tok


def _batch(tok) -> dict[str, torch.Tensor]:
    ids = torch.tensor([tok("Q: where was ann born ? A: paris")["input_ids"]] * 2)
    labels = ids.clone()
    labels[:, :-2] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _ctx(model, batch, teacher: Teacher | None = None) -> LossContext:
    logits, labels = shift_for_next_token(
        model(input_ids=batch["input_ids"]).logits, batch["labels"]
    )
    cache: list[torch.Tensor] = []

    def teacher_logits() -> torch.Tensor:
        assert teacher is not None
        if not cache:
            cache.append(teacher.logits(batch["input_ids"], batch["attention_mask"])[:, :-1])
        return cache[0]

    return LossContext(model, logits, labels, batch["attention_mask"][:, 1:], teacher_logits)


def test_kl_to_an_identical_teacher_is_zero_and_nll_is_the_plain_loss(tiny) -> None:
    model, tok = tiny
    teacher = Teacher(copy.deepcopy(model))
    batch = _batch(tok)
    ctx = _ctx(model, batch, teacher)
    assert float(KLToTeacher(weight=1.0)(ctx).detach()) == pytest.approx(0.0, abs=1e-6)
    assert teacher.forward_calls == 1
    ref = masked_nll(ctx.logits, ctx.labels)
    assert torch.equal(NLLTerm()(ctx), ref)
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_l2_control_sets_mu_so_gradient_norms_match(tiny) -> None:
    model, tok = tiny
    teacher = Teacher(copy.deepcopy(model))
    student = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen).to(p))
    batch = _batch(tok)
    kl = KLToTeacher(weight=1.0, temperature=0.5)
    anchor = {n: p.clone() for n, p in teacher.named_parameters()}
    term = L2ToAnchor(anchor=anchor, weight=0.0, match=kl)
    ctx = _ctx(student, batch, teacher)
    l2 = term(ctx)
    params = [p for p in student.parameters()]
    g_l2 = torch.autograd.grad(l2, params, retain_graph=True)
    g_kl = torch.autograd.grad(kl(ctx), params)
    norm = lambda gs: math.sqrt(sum(float(g.pow(2).sum()) for g in gs))  # noqa: E731
    assert term.weight > 0
    assert norm(g_l2) == pytest.approx(norm(g_kl), rel=1e-4)


def test_l2_at_the_anchor_keeps_its_initial_weight(tiny) -> None:
    model, tok = tiny
    teacher = Teacher(copy.deepcopy(model))
    anchor = {n: p.clone() for n, p in teacher.named_parameters()}
    term = L2ToAnchor(anchor=anchor, weight=0.7, match=KLToTeacher())
    value = term(_ctx(model, _batch(tok), teacher))
    assert term.weight == 0.7 and float(value) == 0.0


def test_fisher_is_positive_normalised_and_follows_requires_grad(tiny) -> None:
    model, tok = tiny
    model.lm_head.weight.requires_grad_(True)
    fisher = diagonal_fisher(model, [_batch(tok), _batch(tok)])
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(fisher) == names
    total = sum(float(f.sum()) for f in fisher.values())
    numel = sum(f.numel() for f in fisher.values())
    assert total / numel == pytest.approx(1.0, rel=1e-5)
    assert all((f >= 0).all() for f in fisher.values())
    assert all(p.grad is None for p in model.parameters())


def test_replay_mix_fraction_and_determinism() -> None:
    main = QADataset(
        [{"input_ids": [i], "labels": [i]} for i in range(30)], list(map(str, range(30)))
    )
    pool = QADataset([{"input_ids": [100 + i], "labels": [0]} for i in range(7)], ["p"] * 7)
    mix = ReplayMix(main, pool, fraction=0.5, seed=0)
    assert len(mix) == 60
    replayed = [mix[i]["input_ids"][0] for i in range(30, 60)]
    assert all(r >= 100 for r in replayed)
    assert len(set(replayed)) == 7  # the whole pool is cycled
    again = ReplayMix(main, pool, fraction=0.5, seed=0)
    assert [again[i] for i in range(60)] == [mix[i] for i in range(60)]
    assert len(ReplayMix(main, pool, fraction=0.0, seed=0)) == 30
    with pytest.raises(ValueError):
        ReplayMix(main, pool, fraction=1.0, seed=0)


def test_incomplete_checkpoints_are_never_resumed(tmp_path) -> None:
    assert last_complete_checkpoint(tmp_path / "none") is None
    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert not (tmp_path / "checkpoint-6").exists()


def test_forgetting_is_the_relative_decline_from_the_peak() -> None:
    assert forgetting([0.8, 1.0, 0.75]) == pytest.approx(0.25)
    assert forgetting([0.5, 0.4, 0.6]) == 0.0
    assert forgetting([0.0, 0.0]) == 0.0
    assert absolute_decline([0.9, 1.0, 0.6]) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        forgetting([])
    rows = [
        {"step": 0, "acc": {"d_held": 0.9, "d_unknown": 0.0}},
        {"step": 5, "acc": {"d_held": 1.0, "d_unknown": 0.5}},
        {"step": 9, "acc": {"d_held": 0.8, "d_unknown": 0.9}},
    ]
    s = summarize_run(rows)
    assert s["forgetting"] == pytest.approx(0.2)
    assert s["held_decline"] == pytest.approx(0.1)
    assert s["final"] == {"d_held": 0.8, "d_unknown": 0.9}
    assert s["peak"]["d_unknown"] == 0.9 and s["steps"] == 9


def _perturbed_teacher(model: torch.nn.Module) -> Teacher:
    """A teacher that disagrees with ``model``: a copy with noise added to every weight."""
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen).to(p))
    return Teacher(other)


def test_kl_only_where_the_teacher_is_confident(tiny) -> None:
    model, tok = tiny
    ctx = _ctx(model, _batch(tok), _perturbed_teacher(model))
    full = float(KLToTeacher(weight=1.0)(ctx))
    assert full > 0
    assert float(KLToTeacher(weight=1.0, min_teacher_prob=1.0 + 1e-6)(ctx)) == 0.0
    assert float(KLToTeacher(weight=1.0, min_teacher_prob=1e-9)(ctx)) == pytest.approx(full)


def test_kl_without_the_target_ignores_the_answer_logit(tiny) -> None:
    model, tok = tiny
    ctx = _ctx(model, _batch(tok), _perturbed_teacher(model))
    full = KLToTeacher(weight=1.0)(ctx)
    non_target = KLToTeacher(weight=1.0, exclude_target=True)(ctx)
    assert float(non_target) > 0
    assert float(non_target) != pytest.approx(float(full))
    (grad,) = torch.autograd.grad(non_target, ctx.logits)
    answers = ctx.labels != -100  # (B, T)
    gold = grad[answers].gather(-1, ctx.labels[answers].unsqueeze(-1))  # (N, 1)
    assert torch.count_nonzero(gold) == 0
    assert grad[answers].abs().sum() > 0
