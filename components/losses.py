"""Knowledge-distillation losses: small pure functions, each with its own test."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch.

    The T^2 factor keeps the gradient scale of the soft term independent of T (Hinton et al., 2015).
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return temperature**2 * kl


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
            alpha: float, temperature: float) -> torch.Tensor:
    """alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * cross-entropy.

    With no teacher logits (plain fine-tuning) this is the cross-entropy alone.
    """
    hard = F.cross_entropy(student_logits, labels)
    if teacher_logits is None or alpha == 0.0:
        return hard
    return alpha * soft_kl(student_logits, teacher_logits, temperature) + (1.0 - alpha) * hard
