"""Knowledge-distillation losses: small pure functions, each with its own test."""

from __future__ import annotations

import torch
import torch.nn.functional as F

UNLABELLED = -1  # label of a transfer-set sentence: it learns from the teacher's soft outputs only


def soft_kl_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per row: T^2 * KL(softmax(teacher/T) || softmax(student/T)).

    The T^2 factor keeps the gradient scale of the soft term independent of T (Hinton et al., 2015).
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(-1)
    return temperature**2 * kl


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    alpha: float | torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * cross-entropy, averaged over rows.

    Rows labelled UNLABELLED (transfer-set sentences) take the soft term alone, at full weight. With no
    teacher logits (plain fine-tuning) this is the cross-entropy of the labelled rows. `alpha` may be one
    weight per row (a tensor): an incremental update teaches replayed rows from the previous model and new
    rows from their labels alone (alpha 0).
    """
    labelled = labels != UNLABELLED
    ce_rows = torch.zeros_like(student_logits[:, 0])
    if labelled.any():
        ce_rows = ce_rows.index_put(
            (labelled.nonzero(as_tuple=True)[0],),
            F.cross_entropy(student_logits[labelled], labels[labelled], reduction="none"),
        )
    per_row = isinstance(alpha, torch.Tensor)
    if teacher_logits is None or (not per_row and alpha == 0.0):
        return ce_rows[labelled].mean() if labelled.any() else ce_rows.sum()
    kl_rows = soft_kl_rows(student_logits, teacher_logits, temperature)
    alphas = alpha.to(kl_rows) if per_row else torch.full_like(kl_rows, alpha)
    weight_kl = torch.where(labelled, alphas, torch.ones_like(kl_rows))
    weight_ce = torch.where(labelled, 1.0 - alphas, torch.zeros_like(kl_rows))
    return (weight_kl * kl_rows + weight_ce * ce_rows).mean()


def hidden_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error between hidden states (batch, tokens, width), over real tokens only."""
    weights = mask.unsqueeze(-1).to(student_hidden.dtype)
    squared = ((student_hidden - teacher_hidden) ** 2 * weights).sum()
    return squared / (weights.sum() * student_hidden.shape[-1]).clamp_min(1.0)


def attention_kl(student_attn: torch.Tensor, teacher_attn: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) between attention distributions (batch, heads, query, key), averaged over
    heads and real query positions. Padded keys carry zero probability in both, so they add nothing."""
    eps = 1e-8
    kl = (teacher_attn * ((teacher_attn + eps).log() - (student_attn + eps).log())).sum(-1)  # (b, h, q)
    weights = mask.unsqueeze(1).to(kl.dtype).expand_as(kl)
    return (kl * weights).sum() / weights.sum().clamp_min(1.0)
