"""Records keep what was recovered beside the truth, paired as scored, with the PII that leaked;
images land as PNG files in the run directory; a record keeps at most the configured examples."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fedaudit.attacks import REGISTRY, Reconstruction
from fedaudit.audit.auditor import Auditor, image_prefix
from fedaudit.audit.records import AttackRecord, read_records
from fedaudit.audit.store import RunStore
from fedaudit.data.demo import generate_demo_records
from fedaudit.metrics.pii import find_pii, leaked
from tests.conftest import TINY_BERT, TINY_GPT2
from tests.helpers import Returns, client_updates, scenario


def _audit(attack, update, store=None, max_examples=64) -> AttackRecord:
    sink = store.append if store is not None else None
    (record,) = Auditor([attack], budget_seconds=30, sink=sink, max_examples=max_examples).audit(*update)
    return record


def test_pii_found_by_category_in_the_demo_records() -> None:
    texts = generate_demo_records(60, seed=3).texts
    found = {name: set().union(*(find_pii(t)[name] for t in texts)) for name in ("phone", "email", "card", "iban")}
    assert all(found.values()), found
    card = "Card 4489 6769 9300 2483 belongs to Laura Gregory."
    assert find_pii(card)["card"] == {"4489676993002483"} and not find_pii(card)["phone"]
    # The digits inside an IBAN are not also a card number.
    wire = "Wire transfer from account ZEMZ41830675375100 (IBAN GB37PIAQ99331886841269) authorised."
    assert find_pii(wire)["iban"] == {"GB37PIAQ99331886841269"} and not find_pii(wire)["card"]
    assert not find_pii("Card 4489 6769 9300 2484 fails the Luhn check.")["card"]


def test_pii_counts_only_values_that_are_also_in_the_truth() -> None:
    truth = ["You can reach Ann Lee at ann@example.org or (460) 648-7647.", "SSN 803-63-1819 on file."]
    # A guessed phone number and a guessed address are well formed but not the client's: no credit.
    guesses = ["You can reach Ann Lee at bob@example.org or (319) 748-9241.", "SSN 803-63-1819 on file."]
    assert leaked(guesses, truth) == {"phone": 0, "email": 0, "card": 0, "iban": 0, "ssn": 1}
    assert leaked(truth, truth)["phone"] == 1 and leaked(truth, truth)["email"] == 1


def test_text_pairs_follow_the_scorers_matching_and_the_cap() -> None:
    sc = scenario(*TINY_GPT2, "data.source=demo", "training.batch_size=6")
    observation, truth = client_updates(sc, 1)[0]
    sequences = truth.sequences()
    # Two sentences back word for word (in another order), one with its tail lost, three missed.
    returned = [sequences[3], sequences[0][: len(sequences[0]) // 2], sequences[1]]
    record = _audit(Returns(Reconstruction("partial", sequences=returned)), (observation, truth), max_examples=5)
    tokenizer = observation.model.tokenizer
    originals = [tokenizer.decode(s) for s in sequences]
    comparison = record.comparison
    assert comparison["kind"] == "text" and comparison["total"] == 6 and comparison["shown"] == 5
    pairs = comparison["pairs"]
    assert [p["original"] for p in pairs] == originals[:5]
    assert [p["exact"] for p in pairs] == [False, True, False, True, False]
    assert pairs[0]["recovered"] == tokenizer.decode(returned[1]) and 0 < pairs[0]["score"]["rouge1"] < 1
    assert pairs[2]["recovered"] is None and pairs[2]["score"]["rouge1"] == 0.0
    assert record.metrics["exact_match"] == pytest.approx(2 / 6)
    expected_pii = leaked([tokenizer.decode(s) for s in returned], originals)
    assert comparison["pii"] == expected_pii and sum(expected_pii.values()) >= 1
    assert record.reconstruction["total"] == 3 and record.reconstruction["shown"] == 3


def test_images_are_png_files_the_record_names(tmp_path) -> None:
    sc = scenario("model.name=mlp", "model.config={hidden=[32]}", "data.source=digits", "training.batch_size=4")
    observation, truth = client_updates(sc, 1)[0]
    features = truth.features.double()
    noisy = (features[[2, 0]] + 0.05 * np.random.default_rng(0).standard_normal(features[[2, 0]].shape)).clamp(0, 1)
    store = RunStore(tmp_path)
    (tmp_path / "records.jsonl").touch()
    returned = Reconstruction("partial", inputs=np.concatenate([features[[1]].numpy(), noisy.numpy()]))
    record = _audit(Returns(returned), (observation, truth), store=store, max_examples=3)
    (stored,) = read_records(tmp_path)
    assert stored.comparison == json.loads(json.dumps(record.comparison)) and stored.images == {}
    pairs = stored.comparison["pairs"]
    assert stored.comparison["kind"] == "image" and len(pairs) == 3 and stored.comparison["total"] == 4
    assert pairs[1]["exact"] and pairs[1]["score"]["psnr"] == 100.0
    assert not pairs[0]["exact"] and 15 < pairs[0]["score"]["psnr"] < 40
    for pair in pairs:
        for name in (pair["original"], pair["recovered"]):
            image = Image.open(tmp_path / name)
            assert image.size == (8, 8) and image.mode == "L"
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    original = np.asarray(Image.open(tmp_path / pairs[1]["original"]), dtype=np.float64) / 255
    assert np.abs(original - features[1, 0].numpy()).max() <= 0.5 / 255 + 1e-9
    # Returned in the order (example 1, example 2, example 0); the pairs follow the true order.
    assert stored.reconstruction["images"] == [pairs[j]["recovered"] for j in (1, 2, 0)]


def test_table_pairs_name_the_cells_that_differ(data_dir) -> None:
    sc = scenario(
        "model.name=mlp",
        "model.config={hidden=[32]}",
        f"data.source={data_dir / 'tabular/adult/adult.data'}",
        "data.modality=table",
        "data.columns=['age','workclass','fnlwgt','education','education_num','marital_status','occupation',"
        "'relationship','race','sex','capital_gain','capital_loss','hours_per_week','native_country','income']",
        "data.label_column=income",
        "data.max_examples=400",
        "training.batch_size=3",
    )
    observation, truth = client_updates(sc, 1)[0]
    rows = truth.features.double().clone()
    schema = observation.model.table_schema
    age = next(c for c in schema.columns if c.name == "age")
    rows[0, age.start] += 20 / age.std  # twenty years off
    record = _audit(Returns(Reconstruction("partial", inputs=rows)), (observation, truth))
    pairs = record.comparison["pairs"]
    assert record.comparison["kind"] == "table" and len(pairs) == 3
    assert pairs[0]["differs"] == ["age"] and not pairs[0]["exact"]
    assert pairs[0]["recovered"]["age"] == pytest.approx(pairs[0]["original"]["age"] + 20)
    assert pairs[1]["exact"] and pairs[1]["differs"] == [] and pairs[1]["recovered"] == pairs[1]["original"]
    assert record.reconstruction["records"][0]["workclass"] == pairs[0]["original"]["workclass"]


def test_recovered_labels_beside_the_true_ones_and_safe_image_paths() -> None:
    sc = scenario(*TINY_BERT, "data.source=demo", "training.batch_size=1")
    update = client_updates(sc, 1, seed=4)[0]
    record = _audit(REGISTRY.make("labels"), update)
    assert record.status == "exact"
    assert record.comparison["labels"] == {"true": update[1].labels.tolist(), "recovered": update[1].labels.tolist()}
    hostile = AttackRecord(round=2, client="../../etc/\x1b]0;x\x07", attack="spear", status="")
    prefix = image_prefix(hostile)
    assert prefix.startswith("images/round-002/client-") and ".." not in prefix and "\x1b" not in prefix
