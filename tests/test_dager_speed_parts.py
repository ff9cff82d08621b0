"""DAGER's fast set-up parts equal what they replace: the sketched SVD equals LAPACK's dense one on
a real gradient, the probe's kept calibration batch equals a fresh forward, and nothing kept
between clients holds on to the private model."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from fedaudit.attacks import spectral
from fedaudit.attacks.dager.layer1 import layer1_terms
from fedaudit.attacks.dager.setup import KeptModel, build_setup, first_inputs
from fedaudit.models.probe import Layer2Probe
from tests.helpers import client_updates, scenario

F64 = torch.float64
# Width 384 >= spectral.SKETCH_MIN: the sketch runs; B = 2 CoLA sentences give about 20 directions.
GPT2 = ["model.name=gpt2-random", "model.config={n_layer=2, n_embd=384, n_head=6}"]


@pytest.fixture(scope="module")
def observation(cola_path):
    sc = scenario(f"data.source={cola_path}", "training.batch_size=2", "audit.attacks=['dager']", *GPT2)
    return client_updates(sc, 1)[0][0]


def _dense(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u, s, _ = torch.linalg.svd(g.to(F64), full_matrices=False)
    return u, s


def test_the_sketched_svd_of_a_real_gradient_equals_the_dense_one(observation) -> None:
    for layer in (0, 1):
        g = observation.gradient(f"transformer.h.{layer}.attn.c_attn.weight").to(F64)  # (384, 1152), float32 sent
        found = spectral.low_rank_svd(g)
        assert found is not None, "a batch's gradient ends in one sharp drop into rounding"
        u, s, vt = found
        ref_u, ref_s = _dense(g)
        k = int((ref_s / ref_s[0] > spectral.ROUNDING).sum())
        assert 0 < k < 64
        assert u.shape == (384, 384) and s.shape == ref_s.shape and vt.shape == (384, 1152)
        torch.testing.assert_close(s[:k], ref_s[:k], rtol=1e-12, atol=0)  # the signal: float64-exact
        projector = u[:, :k] @ u[:, :k].T
        torch.testing.assert_close(projector, ref_u[:, :k] @ ref_u[:, :k].T, rtol=0, atol=1e-12)
        torch.testing.assert_close(u.T @ u, torch.eye(384, dtype=F64), rtol=0, atol=1e-12)
        # The first rounding value (the gap and the noise ratio): a Ritz value, at most the true one.
        assert 0.8 * ref_s[k] <= s[k] <= ref_s[k] * (1 + 1e-12)
        assert float(s[k:].max()) <= float(ref_s[k]) * (1 + 1e-12)
        # The rank logic reads the same rank and noise ratio from both.
        floor = float(torch.finfo(torch.float32).eps)
        assert spectral.spectral_rank(s, floor) == spectral.spectral_rank(ref_s, floor) == k
        torch.testing.assert_close(spectral.left_singular(g)[1][:k], ref_s[:k], rtol=1e-12, atol=0)


def test_spectra_without_a_sharp_drop_into_rounding_go_to_the_dense_svd() -> None:
    gen = torch.Generator().manual_seed(0)
    full = torch.randn(300, 900, generator=gen, dtype=F64)  # no drop at all
    low = torch.randn(300, 8, generator=gen, dtype=F64) @ torch.randn(8, 900, generator=gen, dtype=F64)
    noisy = low + 1e-3 * torch.randn(300, 900, generator=gen, dtype=F64)  # a drop, but not into rounding
    for g in (full, noisy):
        assert spectral.low_rank_svd(g.float().double()) is None
        _, s, _ = spectral.left_singular(g)
        torch.testing.assert_close(s, _dense(g)[1], rtol=1e-12, atol=0)
    low = low.float().double()  # sent in float32: the sketch may run
    u, s, vt = spectral.left_singular(low.T)  # tall: factored through its transpose
    assert u.shape == (900, 300) and vt.shape == (300, 300)
    torch.testing.assert_close(s[:8], _dense(low)[1][:8], rtol=1e-12, atol=0)
    # Numbers sent in float64: their floor may lie below float32's rounding, where the sketch
    # reports no values; the dense SVD then, exactly as LAPACK gives it.
    wide = low.T.contiguous() + 1e-12 * torch.randn(900, 300, generator=gen, dtype=F64)
    torch.testing.assert_close(spectral.left_singular(wide)[1], _dense(wide)[1], rtol=1e-13, atol=0)


def test_the_probe_serves_its_first_batch_again_and_does_not_keep_the_model(observation) -> None:
    cpu = torch.device("cpu")
    model = KeptModel().get(observation, cpu)
    setup = build_setup(observation, cpu, model)
    ids = torch.randint(setup.vocab, (8, 4), generator=torch.Generator().manual_seed(0))
    first = setup.probe.inputs(ids)
    assert setup.probe.inputs(ids).equal(first)
    fresh = Layer2Probe(model, setup.probe.module).inputs(ids)
    assert fresh.equal(first)
    again = build_setup(observation, cpu, model)
    assert again.probe is setup.probe and again.first is setup.first  # one of each per private model
    del again
    probe, dead = setup.probe, weakref.ref(model)
    del model, setup
    gc.collect()
    assert dead() is None and probe._first is not None


def test_kept_layer1_terms_share_no_storage_with_the_private_model(observation) -> None:
    cpu = torch.device("cpu")
    model = KeptModel().get(observation, cpu)
    embedding = model.get_parameter(observation.model.adapter.embedding)
    inputs = first_inputs(model, observation, 8)
    assert inputs.tokens.data_ptr() == embedding.data_ptr()  # a view: no copy per attack
    terms = layer1_terms(inputs, None, cpu, keep=True)
    dead = weakref.ref(model)
    del model, embedding, inputs
    gc.collect()
    assert dead() is None and len(terms.chunks) >= 1
