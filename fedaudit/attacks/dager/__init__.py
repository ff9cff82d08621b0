"""DAGER: exact text recovery from the gradients of a transformer's attention query projections.

Petrov, Dimitrov, Baader, Müller, Vechev, "DAGER: Exact Gradient Inversion for Large Language
Models", NeurIPS 2024. Equation numbers below refer to that paper.

The idea in four lines:

* A linear layer Y = X W has dL/dW = X^T dL/dY, so while the batch holds fewer than d token
  vectors, the input-side space of the query weight's gradient is exactly span{rows of X}
  (Lemma 5.1); an SVD gives an orthonormal basis U of it.
* A vector x is an input of that layer iff its residual ||x - U U^T x|| / ||x|| is ~0 (eq. 5).
* Layer 1 reads norm(E[v] + P[i]) for token v at position i (no position term for rotary
  models), so the check runs over the vocabulary and gives the candidate tokens per position.
* Layer 2 reads a function of the whole prefix (decoders) or sentence (encoders): decoders grow
  sentences left to right keeping extensions that pass the layer-2 check (Sec. 5.2); encoders
  search the per-position candidates jointly, scored on layer 2.

Thresholds come from the data: the rank is the largest gap of the float64 singular values; a
true input's residual is of the order of the noise ratio nu = s_{r+1}/s_r (Davis-Kahan); absent
inputs calibrate the other side (delta): at layer 1 the (r+1)-th smallest residual over all
vocabulary x position candidates, of which exactly r are present; at layer 2 random token
sequences, which are absent with overwhelming probability. The threshold is sqrt(nu * delta).

What this module adds over the reference implementation: the layer-1 check of every (token,
position) pair as Gram terms instead of materialized LayerNorm outputs (one V x d x (r + p)
product), layer-2 extensions batched over all prefixes with their first-layer keys and values
cached, the model's own forward observed through hooks (no patched transformers code), and
no per-batch-size tolerances.

Protocols. FedSGD gives the batch gradient: the check is exact up to float rounding. FedAvg
gives W_E - W_0 = -lr * sum_s g_s over S local steps, whose span is the union of the inputs at
every step's weights. Over E > 1 local epochs each input is seen at E weights: to first order in
the weight drift that is the input plus one drift direction, so the span keeps twice the
inputs' rank (``estimate_span(drift=True)``).
Candidates are formed at the midpoint weights W_0 + (W_E - W_0)/2, so a true input sits as far
from the span as the weights moved between its step and the midpoint; the layer-2 threshold is
calibrated on that distance as measured on the first position (``Dager._layer2_threshold``).
Approximate: such results are ``partial`` with the reason. LoRA: see ``setup.input_span``.

The parts, one file each: ``span`` (the span check and thresholds), ``layer1`` (every token at
every position, in Gram form), ``setup`` (spans, rounding floor, the private model at the right
weights), ``decoder`` and ``encoder`` (the layer-2 searches over ``search.Search``), ``verdict``
(status and reasons) and ``attack`` (the ``Dager`` class). The model's own forward up to layer 2
is observed through ``fedaudit.models.probe.Layer2Probe``.
"""

from fedaudit.attacks.dager.attack import Dager
from fedaudit.attacks.dager.layer1 import FirstInputs, Layer1Terms, layer1_residuals, layer1_terms
from fedaudit.attacks.dager.span import Span, estimate_span

__all__ = ["Dager", "FirstInputs", "Layer1Terms", "Span", "estimate_span", "layer1_residuals", "layer1_terms"]
