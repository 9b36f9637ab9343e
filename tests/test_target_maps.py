"""Target maps of joint attacks: random patches, other-class maps, user files."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from idls.attacks.target_maps import (
    check_target_maps,
    load_map_file,
    other_class_maps,
    patch_maps,
    resolve_target_maps,
)
from idls.errors import UserError


# -- patches -------------------------------------------------------------------------------------
def test_patch_maps_are_seeded_binary_nonempty_and_varied():
    maps = patch_maps(64, (8, 10), seed=5)
    assert maps.shape == (64, 8, 10) and maps.dtype == torch.float32
    assert torch.equal(maps, patch_maps(64, (8, 10), seed=5))
    assert not torch.equal(maps, patch_maps(64, (8, 10), seed=6))
    assert set(maps.unique().tolist()) <= {0.0, 1.0}
    area = maps.flatten(1).mean(1)
    assert bool((area > 0).all()) and bool((area < 1).all())
    assert len({tuple(m.flatten().tolist()) for m in maps}) == 64


def test_patch_maps_depend_on_the_dataset_index_not_the_batch():
    indices = torch.arange(10)
    full = patch_maps(10, (16, 16), seed=1, indices=indices)
    part = patch_maps(3, (16, 16), seed=1, indices=indices[4:7])
    assert torch.equal(full[4:7], part)


def test_patch_shapes_are_rectangles_or_circles():
    """Both shapes are convex: cells on a segment between two inside cells are (nearly all) inside."""
    maps = patch_maps(16, (48, 48), seed=2).bool()
    for m in maps:
        rows, cols = m.nonzero(as_tuple=True)
        pick = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:40]
        r, c = rows[pick].float(), cols[pick].float()
        t = torch.linspace(0, 1, 11)
        mid_r = (r[:, None, None] + t * (r[None, :, None] - r[:, None, None])).round().long()
        mid_c = (c[:, None, None] + t * (c[None, :, None] - c[:, None, None])).round().long()
        assert float(m[mid_r, mid_c].float().mean()) > 0.99


# -- other classes -------------------------------------------------------------------------------
def test_other_class_maps_use_a_donor_of_neither_label_nor_target():
    donor_labels = torch.tensor([0, 1, 2, 3, 4])
    donor_maps = torch.arange(5).float()[:, None, None].expand(5, 2, 2)
    labels = torch.tensor([0, 1, 2, 0])
    targets = torch.tensor([1, 2, 3, 4])
    chosen = other_class_maps(labels, targets, donor_maps, donor_labels, seed=0)[:, 0, 0].long()
    assert bool((chosen != labels).all()) and bool((chosen != targets).all())
    assert torch.equal(chosen, other_class_maps(labels, targets, donor_maps, donor_labels, seed=0)[:, 0, 0].long())


def test_other_class_maps_without_an_eligible_donor_raise():
    with pytest.raises(UserError, match="other-class"):
        other_class_maps(torch.tensor([0]), torch.tensor([1]), torch.zeros(2, 3, 3), torch.tensor([0, 1]), seed=0)


def test_resolve_other_class_keeps_only_correctly_classified_donors():
    x = torch.rand(4, 3, 8, 8)
    labels = torch.tensor([0, 1, 2, 3])
    targets = torch.tensor([1, 0, 3, 2])
    # the classifier gets image 3 wrong: its map (value 3) must never be used
    predict = lambda images: torch.tensor([0, 1, 2, 0])[: len(images)]  # noqa: E731
    maps = resolve_target_maps(
        "other-class", x=x, labels=labels, targets=targets, map_size=(2, 2),
        benign_map_fn=lambda images, cls: cls.float()[:, None, None].expand(-1, 2, 2) / 10,
        predict_fn=predict,
    )
    donors = (maps[:, 0, 0] * 10).round().long()
    assert bool((donors != 3).all()) and bool((donors != labels).all()) and bool((donors != targets).all())


def test_resolve_benign_uses_the_true_classes():
    x = torch.rand(3, 3, 8, 8)
    labels = torch.tensor([2, 0, 1])
    maps = resolve_target_maps("benign", x=x, labels=labels, targets=(labels + 1) % 3, map_size=(1, 1),
                               benign_map_fn=lambda images, cls: cls.float()[:, None, None] / 2)
    assert maps[:, 0, 0].tolist() == [1.0, 0.0, 0.5]


# -- files ---------------------------------------------------------------------------------------
def test_map_file_shapes_and_formats(tmp_path):
    single = torch.rand(4, 4)
    torch.save(single, tmp_path / "one.pt")
    loaded = load_map_file(tmp_path / "one.pt", batch=3, size=(4, 4))
    assert loaded.shape == (3, 4, 4) and torch.equal(loaded[2], single)
    batch = torch.rand(3, 4, 4)
    save_file({"maps": batch}, str(tmp_path / "maps.safetensors"))
    assert torch.equal(load_map_file(tmp_path / "maps.safetensors", batch=3, size=(4, 4)), batch)


@pytest.mark.parametrize(
    "content, message",
    [
        (torch.rand(5, 5), "shape"),
        (torch.rand(2, 4, 4), "shape"),
        (torch.rand(4, 4) + 1.5, r"\[0, 1\]"),
        (torch.full((4, 4), float("nan")), "NaN"),
        (torch.ones(4, 4, dtype=torch.long), "floating"),
    ],
)
def test_bad_map_files_raise_user_errors(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    with pytest.raises(UserError, match=message):
        load_map_file(path, batch=3, size=(4, 4))


def test_unreadable_or_missing_map_files_raise_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_map_file(tmp_path / "missing.pt", batch=1, size=(4, 4))
    path = tmp_path / "code.pt"
    path.write_bytes(pickle.dumps(object(), protocol=2))  # not loadable with weights_only
    with pytest.raises(UserError, match="cannot read"):
        load_map_file(path, batch=1, size=(4, 4))
    (tmp_path / "maps.npy").write_bytes(b"")
    with pytest.raises(UserError, match="must be one of"):
        load_map_file(tmp_path / "maps.npy", batch=1, size=(4, 4))


def test_tensor_target_maps_are_checked_and_unknown_names_rejected():
    assert check_target_maps(torch.ones(1, 2, 2), 3, (2, 2)).shape == (3, 2, 2)
    with pytest.raises(UserError):
        resolve_target_maps("benign-ish", x=torch.rand(1, 3, 4, 4), labels=torch.tensor([0]), targets=torch.tensor([1]),
                            map_size=(2, 2), benign_map_fn=lambda images, cls: torch.zeros(1, 2, 2))
