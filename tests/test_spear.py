"""SPEAR on real MNIST and Adult batches, the image/table data path, and the array metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedaudit.attacks.base import Budget
from fedaudit.attacks.spear import Spear
from fedaudit.attacks.spear.completion import missing_direction, missing_pair, row_directions
from fedaudit.attacks.spear.factors import F64, factor
from fedaudit.attacks.spear.pool import Pool
from fedaudit.audit.scoring import score
from fedaudit.config import DataConfig
from fedaudit.data import load_examples
from fedaudit.metrics.arrays import PSNR_CAP, image_metrics
from tests.helpers import client_updates, scenario

ADULT_COLUMNS = (
    "['age','workclass','fnlwgt','education','education_num','marital_status','occupation',"
    "'relationship','race','sex','capital_gain','capital_loss','hours_per_week','native_country',"
    "'income']"
)


def _mnist(data_dir, *extra: str):
    return scenario(
        "model.name=mlp",
        "model.config={hidden=[1000]}",
        "audit.attacks=['spear']",
        f"data.source={data_dir / 'images/mnist/t10k-images-idx3-ubyte.gz'}",
        *extra,
    )


def _adult(data_dir, *extra: str):
    return scenario(
        "model.name=mlp",
        "model.config={hidden=[1000]}",
        "audit.attacks=['spear']",
        f"data.source={data_dir / 'tabular/adult/adult.data'}",
        "data.modality=table",
        f"data.columns={ADULT_COLUMNS}",
        "data.label_column=income",
        *extra,
    )


def test_spear_recovers_a_real_mnist_batch_exactly(data_dir) -> None:
    ((observation, truth),) = client_updates(_mnist(data_dir, "training.batch_size=8"), 1)
    attack = Spear(device="cpu")
    assert attack.applicable(observation) == (True, "")
    rec = attack.run(observation, Budget(120))
    assert rec.status == "exact", rec.reason
    assert rec.diagnostics["batch_from_rank"] == 8 == truth.batch_size
    assert rec.inputs.shape == truth.features.shape
    metrics = score(rec, truth, observation.model)
    assert metrics["exact_fraction"] == 1.0 and metrics["max_abs_error"] <= 1e-4
    assert metrics["psnr"] == PSNR_CAP and metrics["ssim"] > 0.9999


def _true_columns(observation, truth):
    """The factors of the first layer's gradient and the unit columns of the true Q (X = Q^{-1} R)."""
    layer = observation.model.adapter.dense_layers[0]
    f = factor(observation.gradient(layer.weight).to(F64), float(torch.finfo(torch.float32).eps))
    x = truth.features.reshape(truth.batch_size, -1).to(F64)
    q = torch.linalg.lstsq(x.T, f.R.T).solution.T  # Q X = R
    return f, q / q.norm(dim=0), layer


def test_the_last_column_follows_from_the_other_ones(data_dir) -> None:
    ((observation, truth),) = client_updates(_mnist(data_dir, "training.batch_size=8"), 1)
    f, q, layer = _true_columns(observation, truth)
    weight = observation.global_weights[layer.weight].to(F64)
    bias = observation.global_weights[layer.bias].to(F64)
    basis = torch.linalg.qr(f.R.T).Q
    for missing in range(8):
        found = torch.cat([q[:, :missing], q[:, missing + 1 :]], dim=1)
        candidates = missing_direction(f, found, basis, weight @ basis, bias)
        assert any(abs(float(c @ q[:, missing])) > 1 - 1e-8 for c in candidates), missing
    for pair in ((0, 1), (2, 5), (6, 7)):
        found = q[:, [k for k in range(8) if k not in pair]]
        candidates = torch.stack(missing_pair(f, found, basis, weight @ basis, bias), 1)
        match = (q.T @ candidates).abs() > 1 - 1e-8
        assert match[list(pair)].any(1).all(), pair  # both missing columns are among the candidates
        assert match.any(0).all()  # and nothing else (the scan's mixtures have full-rank sets)


def test_neurons_on_for_one_example_give_its_column(data_dir) -> None:
    # CIFAR-10 images look alike: at b = 25 a uniform draw of 24 rows hits a column about once in 1e8
    # draws, but neurons on for a single example have L_i parallel to that example's row of Q^-1
    sc = scenario(
        "model.name=mlp",
        "model.config={hidden=[1000]}",
        "audit.attacks=['spear']",
        f"data.source={data_dir / 'images/cifar10/test_2000.npz'}",
        "training.batch_size=25",
    )
    ((observation, truth),) = client_updates(sc, 1)
    f, q, layer = _true_columns(observation, truth)
    weight = observation.global_weights[layer.weight].to(F64)
    bias = observation.global_weights[layer.bias].to(F64)
    x = truth.features.reshape(25, -1).to(F64)
    on = (x @ weight.T + bias > 0)[:, f.rows].T
    single = on.sum(1) == 1
    examples = set(torch.nonzero(on[single])[:, 1].tolist())
    assert len(examples) >= 10  # such neurons are common here
    basis = torch.linalg.qr(f.R.T).Q
    found, _ = row_directions(f, basis, weight @ basis, bias, f.L)
    match = (q.T @ found).abs()  # 25 x candidates
    assert (match.amax(0) > 1 - 1e-8).float().mean() >= 0.9  # nearly every candidate is a true column
    assert examples <= set(torch.nonzero(match.amax(1) > 1 - 1e-8).flatten().tolist())
    # the pool keeps a row-read column only when its input reproduces its zero set; peeling those
    # examples out of the rows of L gives columns of examples with no single-example neuron
    pool = Pool(f, weight, bias)
    found, p = row_directions(f, pool.basis, pool.inputs_map, bias, f.L)
    pool.add(found, torch.empty(0), [torch.empty(0, dtype=torch.long)] * found.shape[1], p)
    first = (q.T @ pool.matrix).abs().amax(1) > 1 - 1e-8
    assert ((q.T @ pool.matrix).abs().amax(0) > 1 - 1e-8).all()  # every kept one is a true column
    assert examples <= set(torch.nonzero(first).flatten().tolist()) and len(pool.inverse) == int(first.sum())
    peeled, _ = row_directions(f, pool.basis, pool.inputs_map, bias, pool.deflated())
    more = ((q.T @ peeled).abs() > 1 - 1e-8).any(1) & ~first
    assert int(more.sum()) >= 2
    rec = Spear(device="cpu").run(observation, Budget(120))
    assert rec.status == "exact", rec.reason
    assert score(rec, truth, observation.model)["exact_fraction"] == 1.0


def test_zeros_are_judged_against_each_row_not_the_largest(data_dir) -> None:
    ((observation, truth),) = client_updates(_mnist(data_dir, "training.batch_size=4"), 1)
    f, q, _ = _true_columns(observation, truth)
    true_zeros = f.zeros(q)
    # shrinking half the rows 1e5-fold (neurons with a tiny gradient) changes no zero set, and
    # random directions are not zero on the shrunken rows (only by chance, on under 1%)
    f.L = f.L.clone()
    f.L[::2] *= 1e-5
    f.__dict__.pop("row_norms", None)
    assert torch.equal(f.zeros(q), true_zeros)
    random = torch.randn(4, 16, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert f.zeros(random)[::2].double().mean() < 0.01


def test_spear_recovers_a_real_adult_batch(data_dir) -> None:
    ((observation, truth),) = client_updates(_adult(data_dir, "training.batch_size=8"), 1)
    rec = Spear(device="cpu").run(observation, Budget(120))
    assert rec.status == "exact", rec.reason
    assert rec.diagnostics["batch_from_rank"] == 8
    metrics = score(rec, truth, observation.model)
    assert metrics["feature_accuracy"] >= 0.99
    # recovered rows read back as census records
    schema = observation.model.table_schema
    record = schema.decode(rec.inputs[0].numpy())
    assert set(record) == {c.name for c in schema.columns} and isinstance(record["education"], str)


def test_spear_is_not_applicable_without_relu_sparsity(data_dir) -> None:
    sc = scenario(
        "model.name=cnn",
        "model.config={activation='sigmoid'}",
        "data.source=digits",
        "training.batch_size=2",
        "audit.attacks=['spear']",
    )
    ((observation, _),) = client_updates(sc, 1)
    ok, why = Spear(device="cpu").applicable(observation)
    assert not ok and "ReLU" in why


def test_spear_says_when_the_batch_size_is_not_identifiable(data_dir) -> None:
    # a 16-unit layer cannot separate 32 examples: the gradient has full rank
    sc = scenario(
        "model.name=mlp",
        "model.config={hidden=[16]}",
        "data.source=digits",
        "training.batch_size=32",
        "audit.attacks=['spear']",
    )
    ((observation, _),) = client_updates(sc, 1)
    rec = Spear(device="cpu").run(observation, Budget(30))
    assert rec.status == "partial" and "not identifiable" in rec.reason


def test_image_sources_load_as_unit_range_nchw(data_dir) -> None:
    digits = load_examples(DataConfig(source="digits"), seed=0)
    assert digits.input_shape == (1, 8, 8) and len(digits) == 1797 and digits.num_labels == 10
    mnist = load_examples(
        DataConfig(source=str(data_dir / "images/mnist/t10k-images-idx3-ubyte.gz"), max_examples=500), seed=0
    )
    assert mnist.input_shape == (1, 28, 28) and len(mnist) == 500
    cifar = load_examples(DataConfig(source=str(data_dir / "images/cifar10/test_2000.npz")), seed=0)
    assert cifar.input_shape == (3, 32, 32) and cifar.label_names[0] == "airplane"
    for ex in (digits, mnist, cifar):
        assert ex.inputs.dtype == np.float32 and ex.inputs.min() >= 0.0 and ex.inputs.max() <= 1.0


def test_adult_rows_encode_and_decode_back(data_dir) -> None:
    cfg = DataConfig(
        source=str(data_dir / "tabular/adult/adult.data"),
        modality="table",
        columns=eval(ADULT_COLUMNS),
        label_column="income",
    )
    table = load_examples(cfg, seed=0)
    assert table.label_names == ["<=50K", ">50K"] and len(table) == 32561
    first = table.schema.decode(table.inputs[0])
    # the file's first record: 39, State-gov, 77516, Bachelors, 13, ...
    assert first["workclass"] == "State-gov" and first["education"] == "Bachelors"
    # Numbers read back as written, without the rounding noise of standardizing and back.
    assert (first["age"], first["fnlwgt"], first["capital_gain"], first["capital_loss"]) == (39, 77516, 2174, 0)
    hits = table.schema.feature_hits(table.inputs[0], table.inputs[0])
    assert hits.all() and len(hits) == 14
    # the test file: a "|" comment line and labels that end with a period
    test = load_examples(cfg.model_copy(update={"source": str(data_dir / "tabular/adult/adult.test")}), seed=0)
    assert test.label_names == ["<=50K", ">50K"] and len(test) == 16281


def test_image_metrics_on_known_values() -> None:
    rng = np.random.default_rng(0)
    refs = rng.random((3, 1, 8, 8)) * 0.9  # +0.01 stays inside [0, 1]: no clipping
    same = image_metrics(refs[::-1].copy(), refs)  # order does not matter: one-to-one matching
    assert same == {"psnr": PSNR_CAP, "ssim": 1.0, "exact_fraction": 1.0, "max_abs_error": 0.0}
    noisy = image_metrics(refs[:2] + 0.01, refs)
    assert noisy["exact_fraction"] == 0.0 and noisy["psnr"] == pytest.approx(2 * 40.0 / 3, rel=1e-6)
    with pytest.raises(ValueError, match="at most one reconstruction per example"):
        image_metrics(np.zeros((4, 1, 8, 8)), refs)


def test_dense_models_train_on_images_and_tables(data_dir) -> None:
    sc = scenario(
        "model.name=cnn",
        "model.config={fc_hidden=[64]}",
        f"data.source={data_dir / 'images/cifar10/test_2000.npz'}",
        "training.batch_size=4",
    )
    ((observation, truth),) = client_updates(sc, 1)
    adapter = observation.model.adapter
    assert [d.relu_after for d in adapter.dense_layers] == [True] and not adapter.dense_layers[0].reads_input
    assert all(torch.isfinite(g).all() for g in observation.update.values())
    assert truth.features.shape == (4, 3, 32, 32)


def test_noised_updates_degrade_spear_gracefully_with_reasons() -> None:
    """The noise defense (public std): tiny noise still gives the batch back, heavy noise leaves
    nothing above the noise edge; every outcome is a status with a reason, never an error."""
    from fedaudit.attacks import Budget
    from fedaudit.attacks.spear import Spear
    from fedaudit.audit.scoring import score
    from tests.helpers import client_updates, scenario

    results = {}
    for scale in (1e-7, 1.0):
        sc = scenario(
            "data.source=digits",
            "model.name=mlp",
            "model.config={hidden=[256]}",
            "training.batch_size=4",
            f"defenses.noise.scale={scale}",
        )
        ((observation, truth),) = client_updates(sc, 1)
        rec = Spear(device="cpu").run(observation, Budget(20))
        assert rec.status in ("partial", "failed") and "noise" in rec.reason
        results[scale] = (rec, score(rec, truth, observation.model))
    assert results[1e-7][1]["psnr"] >= 60
    assert results[1.0][0].status == "failed" and "below the edge" in results[1.0][0].reason


def test_a_pruned_update_gives_estimates_not_exact_inputs() -> None:
    from fedaudit import federation
    from fedaudit.attacks import Budget
    from fedaudit.attacks.spear import Spear
    from tests.helpers import client_updates, scenario

    sc = scenario(
        "data.source=digits",
        "model.name=mlp",
        "model.config={hidden=[256]}",
        "training.batch_size=4",
        "defenses.prune.fraction=0.2",
    )
    ((observation, _),) = client_updates(sc, 1)
    assert observation.protocol.lossy_transforms == ("prune",)
    assert federation.lossy_transforms(scenario("defenses.prune.fraction=0")) == ()
    rec = Spear(device="cpu").run(observation, Budget(20))
    assert rec.status == "partial" and "pruned before it was sent" in rec.reason
