"""AID (adversarial interpretation distillation) and the RTS training seam it uses: the extra-loss hook,
fine-tuning from a trained masker, per-epoch checkpoints with resume, the evaluation and the CLI."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from idls.core import checkpoints
from idls.defenses.aid import AIDOptions, AIDTerm, aid_metadata, aid_options, train_aid
from idls.defenses.aid_evaluation import add_noise, evaluate_aid, misclassification, noise_scale_for_rate, unit_noise
from idls.errors import UserError
from idls.interpreters.rts import RTSMasker
from idls.interpreters.rts_training import load_rts, read_rts_metadata, train_rts
from idls.models import create_model
from tests.conftest import run_cli

#: the cheapest inner ADV² that still fools some of the images of the classifier below
TINY_ATTACK = {"attack_warm_start": 10, "attack_steps": 2}


@pytest.fixture(scope="module")
def classifier():
    """The embedded CNN (64 px, 10 classes with a feature pyramid for RTS), briefly trained (seconds) to
    name the dominant colour channel: random weights give a near-constant output no attack can move."""
    from idls.data.synthetic import make_synthetic

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = create_model("embedded_cnn")
    train = make_synthetic(384, seed=5)
    labels = train.images.mean(dim=(2, 3)).argmax(1)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(2):
        for index in torch.randperm(len(labels), generator=generator).split(64):
            loss = F.cross_entropy(model(train.images[index]), labels[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


@pytest.fixture(scope="module")
def data(classifier):
    """24 synthetic test images labelled with the classifier's predictions."""
    from idls.data.synthetic import make_synthetic

    images = make_synthetic(24, seed=0).images
    return images, classifier.predict(images)


@pytest.fixture(scope="module")
def base(classifier, data):
    return train_rts(classifier, *data, epochs=1, selector_epochs=1, batch_size=12, lr=3e-3, seed=0, progress=False)


def head_tensors(masker: RTSMasker) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in masker.head.state_dict().items()}


def assert_same_heads(a: RTSMasker, b: RTSMasker) -> None:
    for (key, x), y in zip(a.head.state_dict().items(), b.head.state_dict().values(), strict=True):
        assert torch.equal(x, y), key


class ZeroHook:
    """An extra loss with zero gradient: Adam then moves nothing, so training must be unchanged."""

    lr = 1e-2

    def __init__(self) -> None:
        self.steps: list[int] = []

    def __call__(self, masker, x, y, step):
        self.steps.append(step)
        return {"loss": 0 * masker(x, y).mask.sum(), "probe": torch.tensor(1.0)}

    def describe(self):
        return {"hook": "zero"}


# ----------------------------------------------------------------------------------
# The seam in train_rts
# ----------------------------------------------------------------------------------
def test_a_hook_without_gradient_leaves_training_bit_identical_and_is_called_every_decoder_step(classifier, data):
    settings = dict(epochs=2, selector_epochs=1, batch_size=10, lr=3e-3, seed=1, progress=False, augment=True)
    plain = train_rts(classifier, *data, **settings)
    hook = ZeroHook()
    hooked = train_rts(classifier, *data, hook=hook, **settings)
    assert_same_heads(plain, hooked)
    assert hook.steps == list(range(6))  # 2 epochs x 3 batches of the 24 images, decoder phase only
    decoder = [h for h in hooked.history if h["phase"] == "decoder"]
    assert [h["extra_probe"] for h in decoder] == [1.0, 1.0]
    assert all("extra_probe" not in h for h in plain.history)


def test_fine_tuning_starts_from_a_copy_of_the_initial_masker_and_continues_its_history(classifier, data, base):
    before = head_tensors(base)
    tuned = train_rts(classifier, *data, epochs=1, batch_size=12, lr=3e-3, seed=0, progress=False, initial=base)
    for key, value in base.head.state_dict().items():
        assert torch.equal(value, before[key]), "the initial masker changed"
    assert tuned.history[: len(base.history)] == base.history
    assert [h["phase"] for h in tuned.history[len(base.history):]] == ["decoder"]  # the selector is kept
    assert torch.equal(tuned.head.selector.embedding, base.head.selector.embedding)
    assert not torch.equal(tuned.head.decoder.out.weight, base.head.decoder.out.weight)
    with pytest.raises(UserError, match="width 99 differs"):
        train_rts(classifier, *data, epochs=1, progress=False, initial=base, width=99)


def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_weights(classifier, data, tmp_path, monkeypatch):
    settings = dict(epochs=2, selector_epochs=1, batch_size=10, lr=3e-3, seed=2, progress=False, augment=True)
    uninterrupted = train_rts(classifier, *data, **settings)
    path = tmp_path / "run.checkpoint.safetensors"
    original = checkpoints.FitCheckpoint.save
    saves = []

    def killed_after_two_epochs(self, epochs_done, tensors, counters=None):
        original(self, epochs_done, tensors, counters)
        saves.append(epochs_done)
        if epochs_done == 2:  # selector epoch + first decoder epoch
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints.FitCheckpoint, "save", killed_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        train_rts(classifier, *data, checkpoint=path, **settings)
    assert path.is_file() and saves == [1, 2]
    monkeypatch.setattr(checkpoints.FitCheckpoint, "save", original)
    resumed = train_rts(classifier, *data, checkpoint=path, **settings)
    assert_same_heads(uninterrupted, resumed)
    assert [h["total"] for h in resumed.history] == [h["total"] for h in uninterrupted.history]
    assert not path.exists()  # removed once complete

    # a checkpoint of another run (here: another learning rate) is ignored, not resumed
    monkeypatch.setattr(checkpoints.FitCheckpoint, "save", killed_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        train_rts(classifier, *data, checkpoint=path, **settings)
    monkeypatch.setattr(checkpoints.FitCheckpoint, "save", original)
    other_settings = {**settings, "lr": 1e-3}
    with pytest.warns(UserWarning, match="another fit"):
        other = train_rts(classifier, *data, checkpoint=path, **other_settings)
    assert_same_heads(other, train_rts(classifier, *data, **other_settings))


# ----------------------------------------------------------------------------------
# AID
# ----------------------------------------------------------------------------------
def test_one_aid_step_raises_the_map_distance_on_a_fixed_adversarial_batch(classifier, data, base):
    x = data[0][:16]
    term = AIDTerm(classifier, AIDOptions(benign_weight=0, anchor_benign=False, **TINY_ATTACK))  # 001's loss
    masker = RTSMasker(classifier, head=copy.deepcopy(base.head))
    with torch.no_grad():
        pred = classifier(x).argmax(1)
    result = term.adversarial(masker, x, pred, step=0)
    assert bool(result.success.any()), "the inner ADV² fooled no image"
    before = term.terms(masker, x, pred, result)
    params = list(masker.head.decoder.parameters())
    grads = torch.autograd.grad(before["loss"], params)
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p -= 1e-2 * g / g.norm().clamp(min=1e-12)
    after = term.terms(masker, x, pred, result)
    assert float(after["l1"]) > float(before["l1"])
    assert float(after["loss"].detach()) == pytest.approx(-float(after["l1"]))


def test_the_benign_distillation_term_starts_at_zero_and_needs_a_teacher(classifier, data, base):
    x = data[0][:16]
    options = AIDOptions(benign_weight=2.0, anchor_benign=True, **TINY_ATTACK)
    student = RTSMasker(classifier, head=copy.deepcopy(base.head))
    term = AIDTerm(classifier, options, teacher=base)
    pred = classifier.predict(x)
    result = term.adversarial(student, x, pred, step=0)
    terms = term.terms(student, x, pred, result)
    assert float(terms["benign_drift"]) == 0  # the student starts as a copy of its teacher
    assert float(terms["loss"].detach()) == pytest.approx(-float(terms["l1"]))
    with torch.no_grad():
        student.head.decoder.out.bias += 0.5
    moved = term.terms(student, x, pred, result)
    assert float(moved["benign_drift"]) > 0
    assert float(moved["loss"].detach()) == pytest.approx(-float(moved["l1"]) + 2 * float(moved["benign_drift"]))
    with pytest.raises(UserError, match="needs the initial masker"):
        AIDTerm(classifier, options)


def test_train_aid_fine_tunes_with_the_aid_term_and_records_it(classifier, data, base):
    options = AIDOptions(epochs=1, batch_size=12, **TINY_ATTACK)
    aid = train_aid(classifier, base, *data, options, progress=False)
    last = aid.history[-1]
    assert last["phase"] == "decoder" and 0 < last["extra_success"] <= 1
    assert last["extra_loss"] == pytest.approx(-last["extra_l1"] + options.benign_weight * last["extra_benign_drift"])
    again = train_aid(classifier, base, *data, progress=False, epochs=1, batch_size=12, **TINY_ATTACK)
    assert_same_heads(aid, again)  # seeded: the same run twice gives the same masker
    assert aid_metadata(options)["aid_options"]["attack_steps"] == 2


def test_aid_options_are_checked_once():
    with pytest.raises(UserError, match="unexpected bogus"):
        aid_options(bogus=1)
    with pytest.raises(UserError, match="not both"):
        aid_options(AIDOptions(), epochs=1)
    with pytest.raises(UserError, match="aid_lr must be > 0"):
        AIDOptions(aid_lr=0)
    with pytest.raises(UserError, match="at least one step"):
        AIDOptions(attack_warm_start=0, attack_steps=0)
    with pytest.raises(UserError, match="must be an integer"):
        AIDOptions(epochs=1.5)


# ----------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------
def test_noise_scale_reaches_the_rate_by_bisection(classifier, data):
    x = data[0]
    labels = classifier.predict(x)
    noise = unit_noise(x.shape, "uniform", 0)
    assert float(noise.min()) >= -1 and float(noise.max()) <= 1
    scale, reached = noise_scale_for_rate(classifier, x, labels, noise, 0.25)
    assert reached >= 0.25 and 0 < scale < 1
    assert misclassification(classifier, add_noise(x, noise, scale), labels, 64) == reached
    assert misclassification(classifier, add_noise(x, noise, 0.0), labels, 64) == 0
    with pytest.raises(UserError, match="unknown noise kind"):
        unit_noise(x.shape, "pink", 0)


def test_evaluating_a_masker_against_itself_gives_equal_columns(classifier, data, base):
    x = data[0][:6]
    labels = classifier.predict(x)
    result = evaluate_aid(classifier, base, base, x, labels, attack_options={"warm_start": 2, "steps": 3},
                          noise_rates=(0.1,), batch_size=4)
    json.dumps(result, allow_nan=False)
    assert result["benign_map_l1"] == 0
    assert result["adv2"]["rts"] == result["adv2"]["rts_aid"]
    assert result["adv2"]["ratio"] in (None, 1.0)
    assert [row["kind"] for row in result["noise"]] == ["gaussian", "uniform"]
    for row in result["noise"]:
        assert row["misclassification"] >= 0.1 and row["rts"] == row["rts_aid"]
    assert result["paper"]["adv2_map_l1_rts_aid"] == 0.10


# ----------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------
def test_train_rts_aid_round_trip_writes_a_loadable_checkpoint_with_aid_metadata(tmp_path):
    base_path, aid_path = tmp_path / "base.safetensors", tmp_path / "aid.safetensors"
    common = ["train-rts", "--model", "embedded_cnn", "--weights", "random", "--data", "embedded", "--n", "12"]
    torch.manual_seed(0)  # --weights random draws the same weights in both runs
    assert run_cli([*common, "--epochs", "1", "--batch-size", "6", "--out", str(base_path)]) == 0
    torch.manual_seed(0)
    code = run_cli([*common, "--aid", "--init", str(base_path), "--epochs", "1", "--aid-option", "batch_size=6",
                    "--aid-option", "attack_steps=1", "--aid-option", "attack_warm_start=1",
                    "--aid-option", "aid_lr=2e-4", "--out", str(aid_path)])
    assert code == 0
    meta = read_rts_metadata(aid_path)
    assert meta["extra"]["defense"] == "aid"
    assert meta["extra"]["aid_options"]["aid_lr"] == 2e-4 and meta["extra"]["aid_options"]["epochs"] == 1
    assert meta["extra"]["init"]["tensors_sha256"] == read_rts_metadata(base_path)["tensors_sha256"]
    torch.manual_seed(0)
    loaded = load_rts(create_model("embedded_cnn"), aid_path)
    assert loaded.history[-1].get("extra_success") is not None
    assert not aid_path.with_name("aid.checkpoint.safetensors").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--aid", "--init", "x.safetensors", "--aid-option", "bogus=1"], "unexpected bogus"),
        (["--aid", "--init", "x.safetensors", "--aid-option", "attack_steps=-1"], "attack_steps must be >= 0"),
        (["--aid", "--init", "x.safetensors", "--aid-option", "lr"], "is not KEY=VALUE"),
        (["--aid"], "pass --init"),
        (["--aid-option", "epochs=1"], "add --aid"),
        (["--out", "rts.pt"], ".safetensors"),
    ],
)
def test_bad_aid_input_is_a_one_line_error(extra, message, capsys, tmp_path):
    code = run_cli(["train-rts", "--model", "embedded_cnn", "--weights", "random", "--data", "embedded", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1


def test_idls_options_lists_aid_options(capsys):
    assert run_cli(["options", "aid"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in AIDOptions.names())
