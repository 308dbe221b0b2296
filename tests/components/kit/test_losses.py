import math

import torch

from components.kit.losses import kd_loss, soft_kl_rows


def test_soft_kl_rows_is_zero_for_identical_logits():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    assert soft_kl_rows(logits, logits.clone(), temperature=2.0).abs().max().item() < 1e-7


def test_soft_kl_rows_matches_hand_computation():
    s, t, temp = torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.0]]), 2.0
    p = torch.softmax(t / temp, -1)[0]
    q = torch.softmax(s / temp, -1)[0]
    expected = temp**2 * float((p * (p / q).log()).sum())
    assert math.isclose(soft_kl_rows(s, t, temp).item(), expected, rel_tol=1e-5)


def test_kd_loss_mixes_terms_by_alpha():
    s = torch.tensor([[1.0, -1.0], [0.2, 0.4]])
    t = torch.tensor([[-1.0, 2.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    ce = torch.nn.functional.cross_entropy(s, y).item()
    kl = soft_kl_rows(s, t, 3.0).mean().item()
    assert math.isclose(kd_loss(s, t, y, 0.3, 3.0).item(), 0.3 * kl + 0.7 * ce, rel_tol=1e-5)
    assert math.isclose(kd_loss(s, None, y, 0.3, 3.0).item(), ce, rel_tol=1e-6)
    assert math.isclose(kd_loss(s, t, y, 0.0, 3.0).item(), ce, rel_tol=1e-6)


def test_unlabelled_rows_learn_from_the_teacher_only():
    s = torch.tensor([[1.0, -1.0], [0.2, 0.4], [0.0, 1.0]])
    t = torch.tensor([[-1.0, 2.0], [0.0, 1.0], [2.0, 0.0]])
    y = torch.tensor([0, 1, -1])
    kl = soft_kl_rows(s, t, 2.0).tolist()
    ce = [torch.nn.functional.cross_entropy(s[i : i + 1], y[i : i + 1]).item() for i in range(2)]
    expected = (0.3 * kl[0] + 0.7 * ce[0] + 0.3 * kl[1] + 0.7 * ce[1] + kl[2]) / 3
    assert math.isclose(kd_loss(s, t, y, 0.3, 2.0).item(), expected, rel_tol=1e-5)


def test_an_all_unlabelled_batch_is_finite_and_trains():
    s = torch.tensor([[1.0, -1.0]], requires_grad=True)
    loss = kd_loss(s, torch.tensor([[0.0, 1.0]]), torch.tensor([-1]), 0.5, 2.0)
    loss.backward()
    assert math.isfinite(loss.item()) and s.grad.abs().sum() > 0
    assert kd_loss(s, None, torch.tensor([-1]), 0.5, 2.0).item() == 0.0


def test_hidden_mse_ignores_padded_tokens():
    from components.kit.losses import hidden_mse

    student = torch.zeros(1, 3, 2)
    teacher = torch.tensor([[[1.0, 1.0], [3.0, 1.0], [100.0, 100.0]]])  # the last token is padding
    mask = torch.tensor([[1, 1, 0]])
    assert math.isclose(hidden_mse(student, teacher, mask).item(), (1 + 1 + 9 + 1) / 4)


def test_attention_kl_is_zero_when_equal_and_positive_otherwise():
    from components.kit.losses import attention_kl

    mask = torch.tensor([[1, 1, 0]])
    teacher = torch.tensor([[0.9, 0.1, 0.0], [0.5, 0.5, 0.0], [0.3, 0.7, 0.0]]).expand(1, 2, 3, 3)
    uniform = torch.tensor([[0.5, 0.5, 0.0]] * 3).expand(1, 2, 3, 3)
    assert attention_kl(teacher, teacher, mask).item() < 1e-6
    # query rows 0 and 1 count (row 2 is padding): KL of (0.9, 0.1) from (0.5, 0.5), and 0
    expected = (0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)) / 2
    assert math.isclose(attention_kl(uniform, teacher, mask).item(), expected, rel_tol=1e-4)


def test_per_row_alpha_weighs_each_row_on_its_own():
    """An incremental update: replayed rows (alpha 0.5) also learn the previous model, new rows (0) the labels."""
    student = torch.tensor([[1.0, -1.0], [0.3, 0.2], [-0.5, 0.5]])
    teacher = torch.tensor([[0.0, 2.0], [1.0, 0.0], [2.0, -2.0]])
    labels = torch.tensor([0, 1, 1])
    rows = [
        kd_loss(student[i : i + 1], teacher[i : i + 1], labels[i : i + 1], a, 2.0)
        for i, a in enumerate((0.0, 0.5, 0.0))
    ]
    mixed = kd_loss(student, teacher, labels, torch.tensor([0.0, 0.5, 0.0]), 2.0)
    assert math.isclose(mixed.item(), sum(r.item() for r in rows) / 3, rel_tol=1e-6)
    # alpha 0 on a row is its cross-entropy alone
    ce = torch.nn.functional.cross_entropy(student[:1], labels[:1])
    assert math.isclose(rows[0].item(), ce.item(), rel_tol=1e-6)
