"""Label recovery from the classification head's gradient.

For logits z = W h + b and cross-entropy, dL/db = p - y and dL/dW = (p - y) h^T per example
(Zhao et al., iDLG, 2020, Sec. 3). Averaged over a batch of B:

    g_b[c] = mean_i p_ic - n_c / B                                            (1)
    g_W[c] = (1/B) sum_i (p_ic - y_ic) h_i                                    (2)

* B = 1 with a bias: g_b has exactly one negative entry, the label (p_y - 1 < 0 < p_c).
* B = 1 without a bias: by (2) every row is a multiple of h; the true row's factor p_y - 1 is
  negative and all others positive, so with C >= 3 classes the true row is the one anti-aligned
  with all others. With C = 2 the two rows are negatives of each other and the features are
  signed (LayerNorm/tanh), so the label is undetermined.
* B > 1 with a bias: by (1) a negative entry means n_c >= 1, and an absent class has
  g_b[c] = mean_i p_ic > 0. Counts follow from (1) once the batch-mean softmax is known. The
  server estimates it by running the global model on random token sequences (the "dummy data"
  estimate of Wainakh et al., "User-level label leakage", PETS 2022, LLG+); counts are therefore
  an estimate, whose error shrinks as the model's predictions depend less on the input.
"""

from __future__ import annotations

import torch

from fedaudit.attacks.base import Attack, Budget, Observation, Reconstruction


def dummy_mean_softmax(observation: Observation, samples: int = 16) -> torch.Tensor:
    """The global model's mean softmax over random inputs (token sequences or uniform features,
    seeded): a data-free estimate of mean_i p_ic in eq. (1)."""
    model = observation.model_at()
    inputs = model.random_inputs(samples, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model.logits(inputs)
    return torch.softmax(logits.double(), dim=-1).mean(0)


def counts_from_bias_gradient(
    bias_grad: torch.Tensor, batch_size: int, mean_softmax: torch.Tensor | None = None
) -> list[int]:
    """Label counts n_c = B (mean_i p_ic - g_b[c]) from eq. (1), rounded to sum to B.

    ``mean_softmax`` estimates mean_i p_ic (uniform if None). A class with g_b[c] < 0 is certainly
    present and keeps at least one example; g_b[c] > 0 only says n_c / B < mean_i p_ic.
    """
    g = bias_grad.double()
    estimate = torch.full_like(g, 1.0 / g.numel()) if mean_softmax is None else mean_softmax.double()
    raw = (batch_size * (estimate - g)).clamp(min=0)
    floor = (g < 0).double() if int((g < 0).sum()) <= batch_size else torch.zeros_like(g)
    counts = torch.maximum(raw.round(), floor)
    # Round to exactly batch_size: grow the most under-counted class, or shrink the most
    # over-counted one above its floor.
    while counts.sum() < batch_size:
        counts[(raw - counts).argmax()] += 1
    while counts.sum() > batch_size:
        counts[torch.where(counts > floor, counts - raw, -torch.inf).argmax()] -= 1
    return [c for c, n in enumerate(counts.long().tolist()) for _ in range(n)]


class LabelRecovery(Attack):
    name = "labels"

    def applicable(self, observation: Observation) -> tuple[bool, str]:
        adapter = observation.model.adapter
        if adapter.task != "classification":
            return False, "the model is a causal LM: its targets are the tokens themselves (no label head)"
        if adapter.head_weight not in observation.update:
            return False, f"the classification head ({adapter.head_weight}) is frozen"
        classes = int(observation.update[adapter.head_weight].shape[0])
        if adapter.head_bias is None:
            if observation.protocol.num_examples > 1:
                return False, (
                    "batch label counts need the head's bias gradient (eq. 1) and this head "
                    f"({adapter.head_weight}) has no bias"
                )
            if classes == 2 and adapter.signed_head_features:
                return False, (
                    "cannot be exact: a bias-free head over signed features with two classes has two "
                    "gradient rows that are negatives of each other, so the label depends on the "
                    "unknown sign of the features"
                )
        return True, ""

    def run(self, observation: Observation, budget: Budget) -> Reconstruction:
        adapter = observation.model.adapter
        batch = observation.protocol.num_examples
        grad_w = observation.gradient(adapter.head_weight).double()
        diagnostics = {"classes": int(grad_w.shape[0]), "batch_size": batch}
        approx = (
            ""
            if observation.exact_gradient
            else (
                f"{observation.protocol.local_steps} local steps: the head's update sums gradients taken at moving "
                "weights, so the signs are those of an estimate"
            )
        )
        if adapter.head_bias is not None:
            grad_b = observation.gradient(adapter.head_bias)
            if batch == 1:
                negative = torch.nonzero(grad_b < 0).flatten().tolist()
                diagnostics["negative_bias_entries"] = len(negative)
                label = int(torch.argmin(grad_b))
                exact = len(negative) == 1 and not approx
                reason = approx or (
                    "the bias gradient has exactly one negative entry"
                    if exact
                    else f"{len(negative)} negative bias-gradient entries; took the smallest"
                )
                return Reconstruction("exact" if exact else "partial", reason, labels=[label], diagnostics=diagnostics)
            mean_softmax = dummy_mean_softmax(observation)
            labels = counts_from_bias_gradient(grad_b, batch, mean_softmax)
            diagnostics["classes_present"] = int((grad_b < 0).sum())
            diagnostics["mean_softmax_estimate"] = [round(float(p), 4) for p in mean_softmax]
            reason = (
                "every class with a negative bias gradient is present; counts estimated with the "
                "global model's mean softmax on random tokens"
            )
            return Reconstruction(
                "partial", "; ".join(filter(None, [reason, approx])), labels=labels, diagnostics=diagnostics
            )
        # B = 1, no bias, C >= 3: the true row is the one whose inner products with all others are negative.
        gram = grad_w @ grad_w.T
        off_diagonal = gram - torch.diag(torch.diag(gram))
        anti = [(off_diagonal[c] < 0).sum().item() for c in range(gram.shape[0])]
        label = max(range(len(anti)), key=anti.__getitem__)
        exact = anti[label] == gram.shape[0] - 1 and sum(a == gram.shape[0] - 1 for a in anti) == 1
        reason = approx or (
            "one head-gradient row is anti-aligned with every other row"
            if exact
            else "no head-gradient row is anti-aligned with all others; took the most anti-aligned"
        )
        return Reconstruction(
            "exact" if exact and not approx else "partial", reason, labels=[label], diagnostics=diagnostics
        )
