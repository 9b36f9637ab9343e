"""The embedded classifier: ``embedded_cnn`` trained on the synthetic set (shipped with idls, else trained once and cached).

``create_model("embedded_cnn", weights="pretrained")`` calls
:func:`trained_embedded_state_dict`, which loads the weights shipped with idls
(:mod:`idls.pretrained`), else those in ``cache_dir()/embedded/``, else trains them
(about a minute on one core) and writes them there atomically (temporary file +
rename, so a killed run never leaves a corrupt cache). The file name carries a hash
of the training recipe, the architecture and the data generator's version, so a
change in any of them retrains instead of loading stale weights.

Training: a fixed training split of the synthetic set (seed
:data:`~idls.data.synthetic.TRAIN_SEED`), label-preserving batched augmentation
(the 8 flips/rotations of the square, per-sample RGB channel permutations and
colour inversion: colours are uniform at random, so these leave the data
distribution unchanged and force the network onto the silhouette), AdamW with a
one-cycle learning-rate schedule. Deterministic given ``TrainConfig.seed``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from idls.data.synthetic import GENERATOR_VERSION, TEST_SEED, TRAIN_SEED, make_synthetic
from idls.paths import cache_dir


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe (every field enters the cache key)."""

    seed: int = 0
    train_size: int = 7_200
    test_size: int = 2_400
    epochs: int = 6
    batch_size: int = 64
    max_lr: float = 1.5e-2
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05


DEFAULT_CONFIG = TrainConfig()


# ---------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------
def augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random label-preserving transforms of a batch ``B x 3 x S x S`` (square images).

    Per sample: one of the 8 symmetries of the square (flips + transpose), a
    permutation of the RGB channels, and colour inversion with probability 1/2.
    """
    b = x.shape[0]
    coins = torch.rand((4, b), generator=generator).to(x.device) < 0.5
    per_sample = lambda c: c[:, None, None, None]  # noqa: E731
    x = torch.where(per_sample(coins[0]), x.flip(-1), x)
    x = torch.where(per_sample(coins[1]), x.flip(-2), x)
    x = torch.where(per_sample(coins[2]), x.transpose(-1, -2), x)
    x = torch.where(per_sample(coins[3]), 1 - x, x)
    perm = torch.rand((b, 3), generator=generator).argsort(dim=1).to(x.device)
    return x[torch.arange(b, device=x.device)[:, None], perm]


# ---------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------
@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` (called on [0, 1] images ``N x 3 x S x S``)."""
    was_training = model.training
    model.eval()
    batches = zip(images.split(batch_size), labels.split(batch_size), strict=True)
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in batches)
    model.train(was_training)
    return correct / max(1, labels.numel())


def train_embedded(config: TrainConfig | None = None, *, progress: bool = True) -> tuple[dict[str, Tensor], dict]:
    """Train ``embedded_cnn`` from scratch (``config`` default: :data:`DEFAULT_CONFIG`); return (state dict, metrics).

    The global RNG state is restored afterwards; the run depends only on ``config``.
    """
    from idls.threads import torch_threads

    config = config or DEFAULT_CONFIG
    with torch_threads(1):  # reproducible across machines, and faster for this small model
        return _train_embedded(config, progress=progress)


def _train_embedded(config: TrainConfig, *, progress: bool) -> tuple[dict[str, Tensor], dict]:
    from idls.models.registry import create_model

    start, cpu_start = time.perf_counter(), time.process_time()
    train = make_synthetic(config.train_size, TRAIN_SEED)
    test = make_synthetic(config.test_size, TEST_SEED)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        classifier = create_model("embedded_cnn")  # random init, drawn from the seeded RNG
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = config.train_size // config.batch_size
    optimiser = torch.optim.AdamW(classifier.parameters(), lr=config.max_lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.max_lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.25
    )
    bar = _progress_bar(config.epochs * steps_per_epoch, enabled=progress)
    classifier.train()
    for epoch in range(config.epochs):
        order = torch.randperm(config.train_size, generator=generator)
        for step in range(steps_per_epoch):
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            x = augment(train.images[index], generator)
            loss = F.cross_entropy(classifier(x), train.labels[index], label_smoothing=config.label_smoothing)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    classifier.eval()
    metrics = {
        "test_accuracy": accuracy(classifier, test.images, test.labels),
        "train_accuracy": accuracy(classifier, train.images[: config.test_size], train.labels[: config.test_size]),
        "epochs": config.epochs,
        "seconds": round(time.perf_counter() - start, 2),
        "cpu_seconds": round(time.process_time() - cpu_start, 2),
        "seed": config.seed,
        "config": asdict(config),
        "generator_version": GENERATOR_VERSION,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    state = {k: v.detach().clone().contiguous() for k, v in classifier.net.state_dict().items()}
    return state, metrics


def _progress_bar(total: int, *, enabled: bool):
    from idls.progress import progress_bar

    return progress_bar(total=total, desc="training embedded_cnn (once, then cached)", unit="batch",
                        disable=None if enabled else True, leave=False)


# ---------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------
def cache_key(config: TrainConfig | None = None) -> str:
    """Short hash of recipe + architecture (parameter names and shapes) + data generator version."""
    config = config or DEFAULT_CONFIG
    from idls.data.synthetic import CLASS_NAMES
    from idls.models.embedded import EmbeddedCNN

    shapes = sorted((k, tuple(v.shape)) for k, v in EmbeddedCNN(len(CLASS_NAMES)).state_dict().items())
    blob = json.dumps([asdict(config), shapes, GENERATOR_VERSION, TRAIN_SEED, TEST_SEED], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cache_paths(config: TrainConfig | None = None) -> tuple[Path, Path]:
    """(weights ``.safetensors``, metrics ``.json``) for ``config`` in ``cache_dir()/embedded``."""
    folder = cache_dir() / "embedded"
    stem = weights_stem(config)
    return folder / f"{stem}.safetensors", folder / f"{stem}.json"


def packaged_paths(config: TrainConfig | None = None) -> tuple[Path, Path]:
    """(weights, metrics) shipped in :mod:`idls.pretrained` for ``config`` (present for the default recipe)."""
    from idls.pretrained import packaged_path

    stem = weights_stem(config)
    return packaged_path(f"{stem}.safetensors"), packaged_path(f"{stem}.json")


def weights_stem(config: TrainConfig | None = None) -> str:
    """The file name, without suffix, of ``config``'s weights: ``embedded_cnn-<cache key>``."""
    return f"embedded_cnn-{cache_key(config)}"


def _locations(config: TrainConfig | None, *, packaged: bool) -> list[tuple[Path, Path]]:
    """Where trained weights for ``config`` are looked for, in order: shipped (if ``packaged``), cached."""
    return ([packaged_paths(config)] if packaged else []) + [cache_paths(config)]


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path`` (same folder, so the rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_cached(weights_path: Path) -> tuple[dict[str, Tensor], dict] | None:
    """Weights and metrics from the cache, or None when absent or unreadable."""
    from safetensors import safe_open

    if not weights_path.is_file():
        return None
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            metrics = json.loads((handle.metadata() or {}).get("metrics", "{}"))
            state = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception:  # noqa: BLE001 - a damaged cache entry is simply retrained
        print(f"idls: ignoring unreadable weights file {weights_path}", file=sys.stderr)
        return None
    return state, metrics


def trained_embedded_state_dict(
    config: TrainConfig | None = None, *, progress: bool = True, packaged: bool = True
) -> dict[str, Tensor]:
    """The trained ``embedded_cnn`` weights: shipped, else cached, else trained now and cached.

    ``config`` defaults to :data:`DEFAULT_CONFIG` (what ``create_model(..., "pretrained")`` uses);
    ``packaged=False`` skips the shipped weights (``python -m idls.pretrained.rebuild`` trains afresh).
    """
    config = config or DEFAULT_CONFIG
    for weights_path, _ in _locations(config, packaged=packaged):
        found = _load_cached(weights_path)
        if found is not None:
            return found[0]
    from safetensors.torch import save_file

    weights_path, json_path = cache_paths(config)
    print("idls: training the embedded classifier on the synthetic set (about a minute, once)", file=sys.stderr)
    state, metrics = train_embedded(config, progress=progress)
    metrics["file"] = weights_path.name
    _atomic_write(weights_path, lambda tmp: save_file(state, str(tmp), metadata={"metrics": json.dumps(metrics)}))
    _atomic_write(json_path, lambda tmp: tmp.write_text(json.dumps(metrics, indent=2) + "\n"))
    return state


def embedded_metrics(config: TrainConfig | None = None, *, packaged: bool = True) -> dict:
    """Metrics of the trained embedded classifier that ``trained_embedded_state_dict`` returns (training it if needed).

    Keys: ``test_accuracy``, ``train_accuracy``, ``epochs``, ``seconds``, ``seed``, ``config``, ...
    """
    for weights_path, json_path in _locations(config, packaged=packaged):
        if not weights_path.is_file():
            continue
        try:
            return json.loads(json_path.read_text())
        except (OSError, json.JSONDecodeError):
            found = _load_cached(weights_path)
            if found is not None:
                return found[1]
    trained_embedded_state_dict(config, packaged=packaged)
    found = _load_cached(cache_paths(config)[0])
    assert found is not None
    return found[1]
