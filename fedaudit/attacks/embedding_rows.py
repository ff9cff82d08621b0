"""Token leakage from the rows of the token-embedding update.

The embedding lookup E[x_t] has gradient dL/dE = sum_t onehot(x_t) (dL/de_t)^T: row v is
non-zero only if token v occurs in the batch (and influences the loss). The backward pass is a
scatter-add into the rows that were looked up, so every other row is exactly zero: no threshold
is needed. (Melis et al., "Exploiting unintended feature leakage", S&P 2019, Sec. V-A.)
Under protocol noise (DP-SGD, a noise defense) every row is non-zero; only rows above the norm a
row of pure noise reaches (``spectral.noise_row_bound``) count, and the result is an estimate.
"""

from __future__ import annotations

import torch

from fedaudit.attacks.base import Attack, Budget, Observation, Reconstruction
from fedaudit.attacks.spectral import noise_row_bound


class EmbeddingRows(Attack):
    name = "embedding-rows"

    def applicable(self, observation: Observation) -> tuple[bool, str]:
        adapter = observation.model.adapter
        if adapter.embedding is None:
            return False, f"{observation.model.name} has no token embeddings (not a text model)"
        if adapter.embedding not in observation.update:
            return False, f"the token embeddings ({adapter.embedding}) are frozen: the update has no rows to read"
        if adapter.tied_embeddings:
            return False, (
                "the token embeddings are tied to the output layer, whose softmax gradient touches "
                "every vocabulary row (set model.config.tie_word_embeddings=false to untie them)"
            )
        return True, ""

    def run(self, observation: Observation, budget: Budget) -> Reconstruction:
        update = observation.update[observation.model.adapter.embedding]
        noise = observation.protocol.noise_std
        vocab, width = update.shape
        if noise > 0:
            cut = noise_row_bound(noise, width, vocab)
            touched = torch.nonzero(update.double().norm(dim=1) > cut).flatten()
        else:
            touched = torch.nonzero(update.abs().amax(dim=1) > 0).flatten()
        tokens = set(touched.tolist())
        diagnostics = {"rows_nonzero": len(tokens), "vocab_size": int(vocab)}
        caveats = []
        if noise > 0:
            caveats.append(
                f"the update carries protocol noise (std {noise:.3g} per entry): rows count as used when "
                f"their norm exceeds the noise bound {cut:.3g}, so rare tokens can hide and noise can pass"
            )
        if observation.model.task == "causal-lm":
            caveats.append(
                "in causal LM the last token of each sequence predicts nothing that is scored, "
                "so its row stays zero unless the token also occurs earlier"
            )
        if observation.protocol.mode == "fedavg" and observation.model.dtype != torch.float64:
            caveats.append(
                "float32 weights: a step smaller than half a float32 ulp of a weight rounds away, "
                "so a used row can look untouched (use model.dtype = 'float64')"
            )
        if caveats:
            return Reconstruction("partial", "; ".join(caveats), tokens=tokens, diagnostics=diagnostics)
        return Reconstruction(
            "exact",
            "every non-zero row is a token the client used, and every used token reaches the loss",
            tokens=tokens,
            diagnostics=diagnostics,
        )
