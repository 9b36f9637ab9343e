"""What a training defence buys, shaped like paper 000 Table VII.

For one classifier and evaluation images: accuracy under untargeted L_inf PGD at each epsilon
(epsilon 0 is the clean accuracy; over *all* images, as the paper's testing accuracy), and
Kendall's tau between the benign and the attacked map under the interpretation attack
(``interpretation-pgd``, Eq. 20, label kept) on the images the model classifies correctly.
Example::

    rows = robustness_table(classifier, images, labels, epsilons=(0, 2 / 255, 8 / 255))
    rows[2]  # {'epsilon': 0.0314, 'accuracy': ..., 'kendall_tau': ..., 'n': ..., 'n_correct': ...}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from idls import metrics
from idls.attacks import create_attack
from idls.interpreters import create_interpreter
from idls.system import Classifier

#: paper 000 Table VII's epsilons (on the 0-255 scale)
TABLE_VII_EPSILONS: tuple[float, ...] = (0, 2, 4, 6, 8, 9, 10)
#: paper 000 Table VII (Wide-ResNet, CIFAR-10, CAM): accuracy and Kendall's tau by epsilon/255
PAPER_TABLE_VII: dict[str, dict[str, dict[float, float]]] = {
    "standard": {"accuracy": {0: 0.785, 2: 0.190, 4: 0.090, 6: 0.080, 8: 0.085, 9: 0.085, 10: 0.080},
                 "kendall_tau": {2: 0.542, 4: 0.132, 6: -0.06, 8: -0.100, 9: -0.083, 10: -0.183}},
    "interpretation-robust": {"accuracy": {0: 0.685, 2: 0.565, 4: 0.465, 6: 0.335, 8: 0.280, 9: 0.265, 10: 0.220},
                              "kendall_tau": {2: 0.870, 4: 0.782, 6: 0.736, 8: 0.703, 9: 0.706, 10: 0.676}},
}


def robustness_table(
    classifier: Classifier,
    images: Tensor,
    labels: Tensor,
    *,
    epsilons: Sequence[float] = tuple(e / 255 for e in TABLE_VII_EPSILONS),
    interpreter: str = "cam",
    pgd_steps: int = 20,
    interpretation_steps: int = 20,
    batch_size: int = 128,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per epsilon: ``epsilon``, ``accuracy`` under PGD (``steps`` of epsilon/4, random start),
    mean ``kendall_tau`` of the interpreter's maps under ``interpretation-pgd``, and the image counts.

    ``images`` ``N x C x H x W`` in [0, 1], ``labels`` ``N``; the model must be in eval mode.
    """
    classifier.eval()
    explainer = create_interpreter(interpreter, classifier)
    device = classifier.device
    x_all, y_all = images.to(device), labels.to(device)
    correct = classifier.predict(x_all) == y_all
    x_ok, y_ok = x_all[correct], y_all[correct]
    rows = []
    for epsilon in epsilons:
        if epsilon == 0:
            accuracy, tau = float(correct.float().mean()), 1.0
        else:
            pgd = create_attack("pgd", mode="untargeted", epsilon=epsilon, step_size=epsilon / 4, steps=pgd_steps,
                                random_start=True, seed=seed)
            batches = zip(x_ok.split(batch_size), y_ok.split(batch_size), strict=True)
            survived = (torch.cat([~pgd.run(classifier, xb, yb).success for xb, yb in batches]) if len(x_ok)
                        else torch.zeros(0))
            accuracy = float(survived.float().sum()) / len(x_all)
            attack = create_attack("interpretation-pgd", interpreter=explainer, epsilon=epsilon,
                                   steps=interpretation_steps, seed=seed)
            taus = []
            for xb, yb in zip(x_ok.split(batch_size), y_ok.split(batch_size), strict=True):
                adversarial = attack.run(classifier, xb, yb).x_adv
                taus.append(metrics.kendall_tau(explainer.attribute(xb, yb), explainer.attribute(adversarial, yb)))
            values = torch.cat(taus) if taus else torch.zeros(0)
            tau = float(values.nanmean()) if len(values) else float("nan")
        rows.append({"epsilon": float(epsilon), "epsilon_255": round(float(epsilon) * 255, 3), "accuracy": accuracy,
                     "kendall_tau": tau, "n": int(len(x_all)), "n_correct": int(correct.sum())})
    return rows


__all__ = ["PAPER_TABLE_VII", "TABLE_VII_EPSILONS", "robustness_table"]
