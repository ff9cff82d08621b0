"""SPEAR's verdict: how sure the attack is, and why. Every status and reason is built here from
what the attack measured. ``exact`` needs every recovered input to reproduce its neurons' on/off
pattern, B to equal the examples the client reports, and an update sent as computed (no lossy
defense, no protocol noise)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from fedaudit.attacks.base import Observation, Reconstruction
from fedaudit.attacks.spear.factors import Factors

if TYPE_CHECKING:
    from fedaudit.models.adapters import DenseLayer


def _noise(observation: Observation) -> str:
    return f"the update carries protocol noise (std {observation.gradient_noise_std:.3g} per gradient entry)"


def unidentifiable(
    observation: Observation, layer: DenseLayer, f: Factors, width: int, inputs: int, diag: dict[str, Any]
) -> Reconstruction | None:
    """A gradient of rank 0 (nothing, or all below the noise) or of full rank (B not identifiable)."""
    b = f.batch
    if b == 0:
        noise = observation.gradient_noise_std
        why = (
            (
                f"every singular value of the gradient of {layer.module} lies below the edge of the protocol "
                f"noise (std {noise:.3g} per entry)"
            )
            if noise > 0
            else f"the gradient of {layer.module} is zero"
        )
        return Reconstruction("failed", why, diagnostics=diag)
    if b >= min(len(f.rows), inputs):
        return Reconstruction(
            "partial",
            (
                f"batch size not identifiable: the gradient of {layer.module} has full rank {b} (width {width}, "
                f"{len(f.rows)} active neurons, input {inputs}), so B >= {b}; a wider layer or smaller batch would leak"
            ),
            diagnostics=diag,
        )
    return None


def incomplete(observation: Observation, f: Factors, found: int, ran_out: bool, diag: dict[str, Any]) -> Reconstruction:
    """Fewer than B directions: the budget ran out, or nothing passed the sparsity filter."""
    if ran_out:
        why = (
            f"found {found} of the {f.batch} directions before the budget ran out ({diag['samples']} subsets "
            f"sampled; uniform draws would need about {diag['uniform_samples_needed']:.3g})"
        )
    else:
        why = "no direction passed the sparsity filter"
    if observation.gradient_noise_std > 0:
        why += (
            f"; {_noise(observation)}, so no neuron's gradient is exactly zero: zeros are judged at "
            f"{math.sqrt(f.floor):.3g} of each row"
        )
    return Reconstruction("partial" if ran_out else "failed", why, diagnostics=diag)


def verdict(
    observation: Observation, layer: DenseLayer, b: int, consistent: int, inputs: Any, diag: dict[str, Any]
) -> Reconstruction:
    """All B inputs recovered: exact, or partial with every reason it falls short."""
    expected, reasons = observation.protocol.num_examples, []
    if consistent < b:
        reasons.append(
            f"{b - consistent} of {b} recovered inputs switch off neurons that carry "
            "gradient (a wrong direction was kept when the budget ran out)"
        )
    if b != expected:
        reasons.append(
            f"the gradient has rank {b} but the client reports {expected} example{'' if expected == 1 else 's'} "
            "(repeated examples, or examples that reach no active neuron, add no rank)"
        )
    lossy = observation.protocol.lossy_transforms
    if lossy:  # e.g. pruning zeroes small gradient entries: x = dW_i / db_i is read through that loss
        reasons.append(
            f"the update was {' and '.join(lossy)}d before it was sent: the inputs are read "
            "through that loss, so their values are estimates"
        )
    if observation.gradient_noise_std > 0:  # zeros are only approximate: the inputs are estimates, not proofs
        reasons.append(f"{_noise(observation)}: directions and scales are estimated through it")
    if reasons:
        return Reconstruction("partial", "; ".join(reasons), inputs=inputs, diagnostics=diag)
    what = "inputs" if layer.reads_input else f"inputs of {layer.module} (features)"
    return Reconstruction(
        "exact",
        f"all {b} {what} recovered; each reproduces its neurons' on/off pattern",
        inputs=inputs,
        diagnostics=diag,
    )
