"""ADV²: joint objective, interpreters' joint views, schedules, warm start, selection, MASK bisection, frameworks."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from idls import metrics
from idls.attacks import Iterate, create_attack
from idls.attacks.defaults import GRAD_PHASES, JointDefaults, joint_defaults
from idls.attacks.joint import ADV2
from idls.attacks.joint_mask import bisect_step_sizes, region_contrast
from idls.attacks.joint_objective import JointObjective, LambdaSchedule, combine_first_success, smoothed_cross_entropy
from idls.errors import UserError
from idls.interpreters import create_interpreter, interpreter_class, list_interpreters
from idls.interpreters.grad import gradient_map
from idls.interpreters.rts import RTSInterpreter, RTSMasker

EPS = 8 / 255


def _load_folder(directory: Path) -> tuple[torch.Tensor, torch.Tensor]:
    rows = list(csv.DictReader(open(directory / "labels.csv")))
    images = [np.asarray(Image.open(directory / r["file"]).convert("RGB")) for r in rows]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return x, torch.tensor([int(r["label"]) for r in rows])


def _correct(classifier, x, labels, n):
    keep = classifier.predict(x) == labels
    return x[keep][:n], labels[keep][:n]


@pytest.fixture(scope="module")
def cifar16(resnet20, cifar_lossless_dir):
    return _correct(resnet20, *_load_folder(cifar_lossless_dir), 16)


@pytest.fixture(scope="module")
def threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _interpreter(name, classifier):
    if name == "rts":  # an untrained masker is enough for the constraint checks
        torch.manual_seed(0)
        return RTSInterpreter(classifier, masker=RTSMasker(classifier))
    options = {"ig": {"steps": 4}, "mask": {"iterations": 5}}.get(name, {})
    return create_interpreter(name, classifier, **options)


# -- pieces ----------------------------------------------------------------------------------------
def test_lambda_schedules():
    ramp = LambdaSchedule("ramp", 5.0, 100)
    assert [ramp(t) for t in (0, 50, 100, 250)] == [5.0, 7.5, 10.0, 10.0]
    phases = LambdaSchedule("phases", 2.0, 1000)
    edges = np.cumsum([share for share, _ in GRAD_PHASES]) * 1000
    multipliers = [m for _, m in GRAD_PHASES]
    assert phases(0) == 2.0 * multipliers[0]
    for edge, before, after in zip(edges[:-1], multipliers[:-1], multipliers[1:], strict=True):
        assert phases(int(edge) - 1) == 2.0 * before and phases(int(math.ceil(edge)) + 1) == 2.0 * after
    assert phases(5000) == 2.0 * multipliers[-1]
    assert LambdaSchedule("constant", 3.0, 10)(7) == 3.0


def test_smoothed_cross_entropy():
    logits = torch.randn(5, 10, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 3, 9, 1, 2])
    plain = F.cross_entropy(logits, targets, reduction="none")
    assert torch.allclose(smoothed_cross_entropy(logits, targets, 1.0), plain)
    # minimised where the softmax equals the soft labels: the gradient vanishes there
    soft = torch.full((1, 10), 0.05 / 9)
    soft[0, 4] = 0.95
    at_optimum = soft.log().requires_grad_(True)
    (grad,) = torch.autograd.grad(smoothed_cross_entropy(at_optimum, torch.tensor([4]), 0.95).sum(), at_optimum)
    assert float(grad.abs().max()) < 1e-6


def test_combine_first_success():
    warm = torch.tensor([3, -1, -1, 0])
    joint = torch.tensor([0, 5, -1, 2])
    assert combine_first_success(warm, joint, 10).tolist() == [3, 15, -1, 0]


def test_defaults_table_and_overrides():
    from idls.attacks import ATTACKS, list_frameworks

    for name in list_interpreters():  # every registered interpreter declares a family with a row
        for framework in list_frameworks():
            for size in (32, 64, 224):
                joint_defaults(interpreter_class(name).family, ATTACKS.get(framework).joint_table, size).validate()
    with pytest.raises(UserError, match="no joint-attack defaults for interpreter family 'user-made'"):
        joint_defaults("user-made", "pgd", 32)  # an unknown family is refused, not given CAM's settings
    assert joint_defaults("cam", "pgd", 224).steps == 1200 and joint_defaults("cam", "pgd", 224).warm_start == 400
    assert joint_defaults("rts", "pgd", 32).encoder_weight == 0.1
    assert joint_defaults("grad", "pgd", 32).label_smoothing == (0.95, 0.99)
    changed = joint_defaults("cam", "pgd", 32).override(lam=1.5, steps=None)
    assert changed.lam == 1.5 and changed.steps == joint_defaults("cam", "pgd", 32).steps
    with pytest.raises(UserError):
        JointDefaults(steps=1, warm_start=1, lam=1.0).override(select_every=0)
    with pytest.raises(UserError):
        joint_defaults("cam", "fgsm", 32)
    with pytest.raises(UserError, match="region_weight"):
        joint_defaults("mask", "pgd", 32).override(region_weight=-1.0)
    assert joint_defaults("mask", "pgd", 32).region_weight > 0 and joint_defaults("cam", "pgd", 32).region_weight == 0


@pytest.mark.parametrize("option, value", [("mask_region_weight", -1.0), ("mask_reset_every", 0),
                                           ("lam_schedule", "cosine"), ("lam", -2.0)])
def test_adv2_errors_name_the_keyword_the_user_typed(option, value):
    with pytest.raises(UserError, match=rf"\b{option}\b"):
        ADV2(interpreter="mask", **{option: value})


def test_region_contrast_matches_the_mask_objective(random_resnet20):
    """p_t(x with m_t deleted) - p_t(x with the rest deleted), checked against MASK's own objective
    (objective minus its penalty = the class probability after deletion); antisymmetric in m_t <-> 1 - m_t."""
    from idls.interpreters.mask import MaskConfig, mask_objective, mask_penalty

    config = MaskConfig.for_input(32)
    x, targets = torch.rand(3, 3, 32, 32), torch.tensor([0, 5, 9])
    maps = torch.rand(3, 8, 8)

    def deleted(m):
        return mask_objective(random_resnet20, x, m, targets, config) - mask_penalty(m, config)

    contrast = region_contrast(random_resnet20, x, maps, targets, config)
    torch.testing.assert_close(contrast, deleted(maps) - deleted(1 - maps), atol=1e-6, rtol=0)
    torch.testing.assert_close(region_contrast(random_resnet20, x, 1 - maps, targets, config), -contrast,
                               atol=1e-6, rtol=0)
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(region_contrast(random_resnet20, x_req, maps, targets, config).sum(), x_req)
    assert bool(torch.isfinite(grad).all()) and grad.abs().sum() > 0


def test_bisection_step_sizes_are_per_sample():
    """Two samples whose acceptable steps end at different sizes each get their own."""
    limits = torch.tensor([0.3, 0.8]) * 0.08
    found = bisect_step_sizes(lambda steps: steps <= limits, lambda steps: steps, 0.08, 12, 2, "cpu")
    assert torch.allclose(found, limits, atol=0.08 / 2**11)
    assert bool((found <= limits).all())
    # the same with a real margin: a linear 2-class model, x moved along -d, margins falling at different rates
    weights = torch.tensor([[1.0], [-1.0]])  # logit_0 = x, logit_1 = -x
    start = torch.tensor([[5.0], [5.0]])
    direction = torch.tensor([[40.0], [10.0]])
    margin_of = lambda xs: (xs @ weights.t()) @ torch.tensor([1.0, -1.0])  # noqa: E731  (logit_0 - logit_1 = 2x)
    found = bisect_step_sizes(lambda xs: margin_of(xs) >= 2.0, lambda s: start - s[:, None] * direction,
                              1.0, 20, 2, "cpu")
    # 2 (5 - s d) >= 2  <=>  s <= 4 / d
    assert torch.allclose(found, torch.tensor([0.1, 0.4]), atol=1e-5)


# -- constraints for every interpreter ------------------------------------------------------------
@pytest.mark.parametrize("name", ["grad", "ig", "cam", "gradcam", "rts", "mask"])
def test_output_in_the_ball_and_extras_for_every_interpreter(name, resnet20, cifar16, threads):
    x, labels = cifar16[0][:2], cifar16[1][:2]
    interpreter = _interpreter(name, resnet20)
    attack = create_attack("adv2", interpreter=interpreter, steps=3, warm_start=2, mask_reset_every=2,
                           mask_inner_steps=1, mask_lookahead_steps=1, mask_bisection_steps=3, select_every=2)
    result = attack.run(resnet20, x, labels)
    assert float((result.x_adv - x).abs().max()) <= EPS + 1e-6
    assert float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1
    size = interpreter.map_size(32)
    assert result.extras["adv_map"].shape == result.extras["target_map"].shape == (2, size, size)
    # recomputed independently: the real interpreter's map of the predicted class of x_adv, the benign
    # map of the true class (the default target), and their mean absolute difference written out
    predicted = resnet20.predict(result.x_adv)
    assert torch.equal(predicted, result.pred)
    adv_map = interpreter.attribute(result.x_adv, predicted)
    benign_map = interpreter.attribute(x, labels)
    torch.testing.assert_close(result.extras["adv_map"], adv_map, rtol=0, atol=1e-5)
    torch.testing.assert_close(result.extras["target_map"], benign_map, rtol=0, atol=1e-5)
    distance = (adv_map - benign_map).abs().sum(dim=(1, 2)) / (size * size)
    torch.testing.assert_close(result.extras["map_distance"], distance, rtol=0, atol=1e-5)
    assert result.iterations_run == 5


# -- warm start and its continuation --------------------------------------------------------------
def test_warm_start_result_is_the_joint_start_point(resnet20, cifar16, threads, monkeypatch):
    x, labels = cifar16[0][:4], cifar16[1][:4]
    cam = create_interpreter("cam", resnet20)
    pgd = create_attack("pgd", steps=6).run(resnet20, x, labels)
    starts = []
    original = JointObjective.evaluate

    def spy(self, it):
        if it.iteration == 0:
            starts.append(it.x.detach().clone())
        return original(self, it)

    monkeypatch.setattr(JointObjective, "evaluate", spy)
    adv2 = create_attack("adv2", interpreter=cam, steps=0, warm_start=6).run(resnet20, x, labels)
    assert torch.equal(starts[0], pgd.x_adv)  # the joint phase starts where 6 plain PGD steps ended
    assert torch.equal(adv2.x_adv[pgd.success], pgd.x_adv[pgd.success])
    assert torch.equal(adv2.iterations_to_success, pgd.iterations_to_success)


# -- surrogate in the loss, real model for the selection -----------------------------------------
def test_grad_loss_uses_the_surrogate_and_selection_the_real_model(resnet20, random_resnet20, cifar16, threads):
    """A deliberately different 'surrogate' (another network) makes the two roles distinguishable."""
    x, labels = cifar16[0][:3], cifar16[1][:3]
    grad = create_interpreter("grad", resnet20, surrogate=random_resnet20)
    view = grad.for_joint_attack()
    assert view is grad and not view.joint_map_is_exact
    targets = (labels + 1) % 10
    target_maps = grad.attribute(x, labels)
    objective = JointObjective(view, targets, target_maps, LambdaSchedule("constant", 1.0, 10),
                               select_every=1, last_iteration=10)
    it = Iterate(x=x.clone().requires_grad_(True), index=torch.arange(3), iteration=0)
    evaluation = objective.evaluate(it)
    assert torch.allclose(evaluation.extras["map"], gradient_map(random_resnet20, x, targets), atol=1e-6)
    assert torch.allclose(evaluation.logits, random_resnet20(x), atol=1e-5)
    # selection: the real model's map, for the samples the logits call successful
    evaluation.logits = F.one_hot(targets, 10).float() * 10  # make every sample count as successful
    real = metrics.map_l1(gradient_map(resnet20, x, targets), target_maps)
    assert torch.allclose(objective.score(it, evaluation), real, atol=1e-6)
    evaluation.logits = F.one_hot(labels, 10).float() * 10  # none successful: no evaluation needed
    assert bool(torch.isinf(objective.score(it, evaluation)).all())
    # between select_every periods iterates are not candidates
    objective.select_every = 5
    late = Iterate(x=it.x, index=it.index, iteration=3)
    assert bool(torch.isinf(objective.score(late, evaluation)).all())


EXACT_IN_GRAPH = [name for name in list_interpreters()
                  if not interpreter_class(name).needs_smooth_surrogate and not interpreter_class(name).map_is_optimised]


@pytest.mark.parametrize("name", EXACT_IN_GRAPH)
def test_exact_joint_views_reproduce_the_interpreter_and_classifier(name, resnet20, cifar16, threads):
    x, labels = cifar16[0][:3], cifar16[1][:3]
    interpreter = _interpreter(name, resnet20)
    view = interpreter.for_joint_attack()
    assert view.joint_map_is_exact
    x_in = x.clone().requires_grad_(True)
    out = view.joint_forward(x_in, (labels + 2) % 10)
    assert torch.allclose(out.maps, interpreter.attribute(x, (labels + 2) % 10), atol=1e-5)
    assert torch.allclose(out.logits, resnet20(x), atol=1e-4)
    (grad,) = torch.autograd.grad(out.maps.sum(), x_in)  # in the graph: the joint loss can differentiate it
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0
    if out.encoder_logits is not None:
        assert torch.allclose(out.encoder_logits, resnet20(x), atol=1e-4)


def test_joint_view_of_grad_builds_a_smooth_surrogate_and_leaves_the_interpreter_alone(resnet20):
    grad = create_interpreter("grad", resnet20)
    view = grad.for_joint_attack()
    assert grad.surrogate is None and view is not grad
    assert view.surrogate is not resnet20 and view.surrogate.info.name.endswith("+smooth")
    assert view.classifier is resnet20


# -- the key property: ADV² keeps the benign CAM, PGD does not -------------------------------------
def _compare_with_pgd(classifier, x, labels, interpreter, pgd_steps, **adv2_options):
    pgd = create_attack("pgd", steps=pgd_steps).run(classifier, x, labels)
    adv2 = create_attack("adv2", interpreter=interpreter, **adv2_options).run(classifier, x, labels, pgd.target)
    benign = interpreter.attribute(x, labels)
    maps = {"pgd": interpreter.attribute(pgd.x_adv, pgd.pred), "adv2": adv2.extras["adv_map"]}
    results = {}
    for name, result in (("pgd", pgd), ("adv2", adv2)):
        ok = result.success
        results[name] = dict(
            success=result.success_rate,
            l1=float(metrics.map_l1(maps[name], benign)[ok].mean()),
            iou=float(metrics.topk_iou(maps[name], benign)[ok].mean()),
        )
    return results


def test_adv2_cam_beats_pgd_on_map_similarity(resnet20, cifar16, threads):
    x, labels = cifar16
    cam = create_interpreter("cam", resnet20)
    results = _compare_with_pgd(resnet20, x, labels, cam, pgd_steps=30, warm_start=10, steps=40)
    pgd, adv2 = results["pgd"], results["adv2"]
    assert adv2["success"] >= pgd["success"] - 1 / 16
    assert adv2["l1"] < 0.5 * pgd["l1"]
    assert adv2["iou"] > 1.4 * pgd["iou"]


@pytest.mark.slow
def test_adv2_cam_meets_the_project_targets(resnet20, cifar_lossless_dir, cifar_jpeg_dir, threads):
    x1, y1 = _load_folder(cifar_lossless_dir)
    x2, y2 = _load_folder(cifar_jpeg_dir)
    x, labels = _correct(resnet20, torch.cat([x1, x2]), torch.cat([y1, y2]), 64)
    results = _compare_with_pgd(resnet20, x, labels, create_interpreter("cam", resnet20), pgd_steps=100)
    pgd, adv2 = results["pgd"], results["adv2"]
    assert adv2["success"] >= 0.95
    assert adv2["l1"] <= 0.4 * pgd["l1"]
    assert adv2["iou"] >= 0.5 and adv2["iou"] >= 1.4 * pgd["iou"]


@pytest.mark.slow
def test_adv2_grad_beats_pgd_with_the_default_settings(resnet20, cifar16, threads):
    x, labels = cifar16
    results = _compare_with_pgd(resnet20, x, labels, create_interpreter("grad", resnet20), pgd_steps=100)
    pgd, adv2 = results["pgd"], results["adv2"]
    assert adv2["success"] >= 0.95
    assert adv2["l1"] <= 0.6 * pgd["l1"]
    assert adv2["iou"] >= 1.4 * pgd["iou"]


@pytest.mark.slow
def test_adv2_stadv_grad_fools_every_photo_with_the_default_settings(resnet20, cifar_lossless_dir, threads):
    """The StAdv row for GRAD starts from a short plain StAdv run: from the clean image the joint run left some
    photos unfooled (training photos; the test photos are for measuring only)."""
    from idls.data.datasets import load_images, select_correct

    train = cifar_lossless_dir.parents[0] / "train"
    if not train.is_dir():
        pytest.skip(f"no CIFAR-10 training photos at {train}")
    photos = select_correct(resnet20, load_images(str(train), input_size=32, n=40, seed=11, num_classes=10), 16)
    x, labels = photos.images, photos.labels
    targets = (labels + 1 + torch.arange(len(labels)) % 9) % 10
    grad = create_interpreter("grad", resnet20)
    benign = grad.attribute(x, labels).detach()
    adv2 = create_attack("adv2", framework="stadv", interpreter=grad).run(resnet20, x, labels, targets)
    stadv = create_attack("stadv").run(resnet20, x, labels, targets)
    assert adv2.success.float().mean() >= 0.95 and stadv.success.float().mean() >= 0.95

    def l1(images):
        return (grad.attribute(images, targets).detach() - benign).abs().mean().item()

    assert l1(adv2.x_adv) <= 0.6 * l1(stadv.x_adv)


# -- target maps, early stop, frameworks ----------------------------------------------------------
def test_patch_target_moves_the_map_towards_the_patch(resnet20, cifar16, threads):
    x, labels = cifar16[0][:8], cifar16[1][:8]
    cam = create_interpreter("cam", resnet20)
    attack = create_attack("adv2", interpreter=cam, target_map="patch", seed=3, warm_start=10, steps=40)
    patch = attack.run(resnet20, x, labels)
    pgd = create_attack("pgd", steps=30).run(resnet20, x, labels, patch.target)
    pgd_to_patch = metrics.map_l1(cam.attribute(pgd.x_adv, pgd.pred), patch.extras["target_map"])
    assert float(patch.extras["map_distance"].mean()) < 0.7 * float(pgd_to_patch.mean())
    again = create_attack("adv2", interpreter=cam, target_map="patch", seed=3, warm_start=1, steps=0)
    again = again.run(resnet20, x, labels)
    assert torch.equal(again.extras["target_map"], patch.extras["target_map"])


def test_other_class_target_and_wrong_map_file(resnet20, cifar16, tmp_path, threads):
    x, labels = cifar16[0][:8], cifar16[1][:8]
    cam = create_interpreter("cam", resnet20)
    attack = create_attack("adv2", interpreter=cam, target_map="other-class", warm_start=1, steps=1)
    result = attack.run(resnet20, x, labels)
    benign = cam.attribute(x, labels)
    rows = [int((benign - m).abs().flatten(1).sum(1).argmin()) for m in result.extras["target_map"]]
    assert all(labels[r] != labels[i] and labels[r] != result.target[i] for i, r in enumerate(rows))
    torch.save(torch.rand(7, 7), tmp_path / "map.pt")
    attack = create_attack("adv2", interpreter=cam, target_map=str(tmp_path / "map.pt"), warm_start=1, steps=1)
    with pytest.raises(UserError, match="shape"):
        attack.run(resnet20, x, labels)


def test_stop_distance_ends_early_and_keeps_the_ball(resnet20, cifar16, threads):
    x, labels = cifar16[0][:4], cifar16[1][:4]
    cam = create_interpreter("cam", resnet20)
    early = create_attack("adv2", interpreter=cam, warm_start=20, steps=50, stop_distance=1.0, check_every=5)
    result = early.run(resnet20, x, labels)
    assert bool(result.success.all())
    assert result.iterations_run == 20 + 5  # everyone is done after the first check
    strict = create_attack("adv2", interpreter=cam, warm_start=20, steps=12, stop_distance=0.0, check_every=5)
    result = strict.run(resnet20, x, labels)
    assert result.iterations_run == 20 + 12
    assert float((result.x_adv - x).abs().max()) <= EPS + 1e-6


@pytest.mark.parametrize("framework", ["cw", "stadv"])
def test_adam_frameworks_run_the_joint_objective(framework, resnet20, cifar16, threads):
    x, labels = cifar16[0][:3], cifar16[1][:3]
    cam = create_interpreter("cam", resnet20)
    options = {"search_steps": 1} if framework == "cw" else {}
    result = create_attack("adv2", interpreter=cam, framework=framework, steps=15, framework_options=options).run(
        resnet20, x, labels)
    if framework == "cw":
        assert float((result.x_adv - x).abs().max()) <= EPS + 1e-6
    ok = result.success
    assert torch.allclose(result.extras["score"][ok], result.extras["map_distance"][ok], atol=1e-5)
    edge = create_attack("advedge+", interpreter=cam, framework=framework, steps=5, framework_options=options)
    out = edge.run(resnet20, x, labels)
    from idls.attacks.edge import binary_edges

    assert not bool(((out.x_adv != x) & (binary_edges(x) == 0).expand_as(x)).any())


@pytest.mark.parametrize("framework", ["cw", "stadv"])
def test_mask_on_adam_frameworks_selects_with_real_mask_maps(framework, resnet20, cifar16, threads):
    x, labels = cifar16[0][:2], cifar16[1][:2]
    mask = create_interpreter("mask", resnet20, iterations=5)
    options = {"search_steps": 1} if framework == "cw" else {}
    attack = create_attack("adv2", interpreter=mask, framework=framework, steps=4, warm_start=2, mask_reset_every=2,
                           mask_inner_steps=1, mask_lookahead_steps=1, framework_options=options)
    result = attack.run(resnet20, x, labels)
    chosen = torch.isfinite(result.extras["score"]) & result.success
    real = metrics.map_l1(mask.attribute(result.x_adv, result.target), result.extras["target_map"])
    assert torch.allclose(result.extras["score"][chosen], real[chosen], atol=1e-5)


def test_bad_configurations_raise_user_errors(resnet20, random_resnet20):
    cam = create_interpreter("cam", resnet20)
    with pytest.raises(UserError, match="targeted"):
        create_attack("adv2", interpreter=cam, mode="untargeted")
    with pytest.raises(UserError, match="epsilon"):
        create_attack("adv2", interpreter=cam, framework="stadv", epsilon=0.1)
    with pytest.raises(UserError, match="framework"):
        create_attack("adv2", interpreter=cam, framework="fgsm")
    with pytest.raises(UserError, match="target map"):
        create_attack("adv2", interpreter=cam, target_map="benigm")
    with pytest.raises(UserError):
        create_attack("adv2", interpreter=cam, steps=-1)
    with pytest.raises(UserError, match="different classifier"):
        attack = create_attack("adv2", interpreter=cam, steps=1)
        attack.run(random_resnet20, torch.rand(1, 3, 32, 32), torch.tensor([0]))


def test_interpreter_by_name_is_built_for_the_attacked_classifier(resnet20, cifar16, threads):
    x, labels = cifar16[0][:2], cifar16[1][:2]
    result = create_attack("adv2", interpreter="gradcam", warm_start=2, steps=2).run(resnet20, x, labels)
    assert result.extras["adv_map"].shape == (2, 8, 8)

