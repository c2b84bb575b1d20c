"""Knowledge distillation from the FP model during fixed-bit fine-tuning (``distill``)."""

from __future__ import annotations

import torch
from torch import nn


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """Per-sample knowledge-distillation loss ``[n]``: T²·KL(p_teacher,T ‖ p_student,T), with
    p_·,T = softmax(logits / T) (Hinton et al.; T² keeps the gradient scale of T = 1).

    logits, teacher_logits: ``[n, C]``; the teacher's side carries no gradient.
    """
    t = float(temperature)
    log_p = nn.functional.log_softmax(teacher_logits.detach() / t, dim=1)
    log_q = nn.functional.log_softmax(logits / t, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1) * (t * t)
