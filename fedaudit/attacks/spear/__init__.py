"""SPEAR: exact recovery of a whole batch from the gradient of a fully connected ReLU layer.

Dimitrov, Müller, Petrov, Vechev, "SPEAR: Exact Gradient Inversion of Batches in Federated
Learning", NeurIPS 2024. Section numbers below refer to that paper.

For a layer z = W x + b followed by ReLU and a batch of B inputs (rows of X, B x n), the mean
loss gives G = dL/dW = D X with D = (dL/dZ)^T (m x B), and g = dL/db = D 1. Then:

* rank G = B while B <= min(m, n) (Sec. 3): the batch size is the spectral rank of G.
* With G = L R (thin SVD, L: m x B), D = L Q and X = Q^{-1} R for one unknown invertible Q
  (Theorem 3.2).
* ReLU zeroes dL/dz wherever z <= 0, so each column of D is sparse (about half its entries).
  If B - 1 rows of L, L_A, are all zero rows of column j of D, then L_A q_j = 0: q_j spans
  the kernel of L_A (Sec. 4.1). Random row subsets are sampled in batches; a kernel vector is
  kept when L q has far more zeros than the B - 1 it was built to have (the sparsity filter).
* Sampling also meets combinations of columns that look sparse; ``refine`` and ``realizable``
  reject them (see there).
* The B sparsest independent directions are picked greedily (Sec. 4.2), their scale comes from
  the bias gradient, L Q_hat s = g (Sec. 4.3), and X = Q^{-1} R.

Success needs all B - 1 sampled rows inside one column's zero set, probability about
rho^(B-1) per column for zero fraction rho: the cost is exponential in B (about 2^B samples at
rho = 1/2), and far worse when examples look alike and many neurons are on for all of them.
Additions of ours (not in the paper) cut it, all from one fact: an input known up to scale
pins down neurons it surely switches off (negative drive and non-positive bias), and those rows
of L have its column as their kernel (``_certain_kernels``). Inputs known up to scale come from
rows of L read as rows of Q^{-1}: a neuron on for one example only has its row parallel to that
example's (``row_directions``), and rows with the found examples peeled off give more
(``Pool.deflated``); from the plane orthogonal to B - 2 found columns (``missing_pair``); and
from the line orthogonal to B - 1 (``missing_direction``). In between, rows are drawn in
proportion to their estimated chance of being zero in the columns not found yet
(``DirectionSampler.guide``). The row reads take turns with the draws, so where they give
nothing (small or unlike batches) they cost at most as much time as the draws. Before sampling,
the uniform cost goes into the diagnostics; with a budget, a ``partial`` result says how many
of the B directions were found.

What the attack checks before saying ``exact``: every neuron a recovered input switches off,
pushed through the layer's known weights, has a zero entry in that input's gradient column (a
forward-pass check the gradient alone does not force: a wrong input switches off neurons that
carry gradient), and B equals the number of examples the client reports.

The parts, one file each: ``factors`` (G = L R), ``sampling`` (row subsets, Sec. 4.1),
``filters`` (sparsity and realizability), ``completion`` (our row reads and completions),
``pool`` (the greedy pick, Sec. 4.2), ``solution`` (scales and the forward check, Sec. 4.3),
``verdict`` (status and reasons) and ``attack`` (``SpearOptions`` and the ``Spear`` class).
"""

from fedaudit.attacks.spear.attack import Spear, SpearOptions
from fedaudit.attacks.spear.factors import Factors, expected_samples, factor
from fedaudit.attacks.spear.filters import realizable, refine

__all__ = ["Factors", "Spear", "SpearOptions", "expected_samples", "factor", "realizable", "refine"]
