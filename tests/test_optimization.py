"""DLG, iDLG and Inverting Gradients on real digits (DLG's sigmoid LeNet), and where they do not apply."""

from __future__ import annotations

from fedaudit.attacks import make_attack
from fedaudit.attacks.base import Budget
from fedaudit.audit.scoring import score
from tests.conftest import TINY_GPT2
from tests.helpers import client_updates, scenario

LENET = ["model.name=cnn", "model.config={activation='sigmoid'}", "data.source=digits", "training.batch_size=1"]


def test_dlg_recovers_a_real_digit_and_its_label() -> None:
    (observation, truth), = client_updates(scenario(*LENET), 1)
    rec = make_attack("dlg", "cpu", {"steps": 300}).run(observation, Budget(120))
    assert rec.status == "partial" and "not a proof" in rec.reason
    assert rec.diagnostics["gradient_distance"] < 1e-5
    metrics = score(rec, truth, observation.model)
    # the digit is recognisable: structure matches closely, pixels to a few grey levels
    assert metrics["ssim"] > 0.9 and metrics["psnr"] > 15 and metrics["label_accuracy"] == 1.0


def test_idlg_reads_the_label_exactly_at_batch_size_one() -> None:
    for observation, truth in client_updates(scenario(*LENET), 3, seed=2):
        rec = make_attack("idlg", "cpu", {"steps": 5}).run(observation, Budget(60))
        assert rec.diagnostics["labels_status"] == "exact"
        assert rec.labels == truth.labels.tolist()
        assert rec.inputs.shape == truth.features.shape


def test_optimization_attacks_say_where_they_do_not_apply(cola_path) -> None:
    (text_obs, _), = client_updates(scenario(*TINY_GPT2, f"data.source={cola_path}", "training.batch_size=2"), 1)
    ok, why = make_attack("ig", "cpu").applicable(text_obs)
    assert not ok and "text" in why
    fedavg = scenario(*LENET[:-1], "training.batch_size=2", "training.mode=fedavg", "training.mini_batch_size=1")
    (avg_obs, _), = client_updates(fedavg, 1)
    ok, why = make_attack("dlg", "cpu").applicable(avg_obs)
    assert not ok and "FedAvg" in why
