"""The built-in procedural `shapes` dataset."""

import itertools
import pickle
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sketchenv.datasets import shapes
from sketchenv.datasets.shapes import SHAPES, SPLIT_SIZES, Shapes


def distinct(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute pixel difference between every image of `a` and every image of `b`."""
    return (a.flatten(1)[:, None] - b.flatten(1)[None]).abs().mean(-1)


def test_items_are_float_rgb_images_in_unit_range_with_int_labels():
    data = Shapes("val", image_size=32)
    image, label = data[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label < len(data.classes)
    batch = data.images(range(64))
    assert batch.shape == (64, 3, 32, 32) and batch.dtype == torch.float32
    assert batch.min() >= 0 and batch.max() <= 1
    assert batch.std(dim=(1, 2, 3)).min() > 0.03  # no flat images


@pytest.mark.parametrize("size", [32, 64, 96])
def test_image_size_is_honoured(size):
    data = Shapes("test", image_size=size, n_images=12)
    assert data[5][0].shape == (3, size, size)
    assert data.images([0, 11]).shape == (2, 3, size, size)


def test_default_split_sizes_and_n_images():
    assert [len(Shapes(split)) for split in ("train", "val", "test")] == [10_000, 1_000, 1_000]
    assert SPLIT_SIZES == {"train": 10_000, "val": 1_000, "test": 1_000}
    assert len(Shapes("val", n_images=37)) == 37


def test_same_seed_and_index_give_identical_pixels_different_seeds_differ():
    a = Shapes("train", image_size=32, seed=3).images(range(20))
    b = Shapes("train", image_size=32, seed=3).images(range(20))
    c = Shapes("train", image_size=32, seed=4).images(range(20))
    assert torch.equal(a, b)
    assert distinct(a, c).diagonal().min() > 0.01


def test_an_item_does_not_depend_on_its_batch_or_the_split_length():
    data = Shapes("train", image_size=32)
    alone = torch.stack([data[i][0] for i in (7, 3, 500)])
    assert torch.equal(data.images([7, 3, 500]), alone)
    assert torch.equal(data.images(range(600))[[7, 3, 500]], alone)
    assert torch.equal(data.images([-9_993, 3, 500]), alone)  # negative indices wrap
    longer = Shapes("train", image_size=32, n_images=50_000)
    assert torch.equal(longer.images([7, 3, 500]), alone)
    assert longer.labels[:10_000] == data.labels


def test_images_within_a_split_are_all_different():
    images = Shapes("val", image_size=32).images(range(200))
    gaps = distinct(images, images) + torch.eye(200)
    assert gaps.min() > 0.01


def test_splits_are_disjoint():
    drawn = {split: Shapes(split, image_size=32).images(range(100)) for split in shapes.SPLITS}
    for a, b in itertools.combinations(shapes.SPLITS, 2):
        assert distinct(drawn[a], drawn[b]).min() > 0.01, (a, b)
    # separate random streams: no item key is shared by two splits
    keys = {
        s: set(shapes._keys(0, s, 0, np.arange(SPLIT_SIZES[s])).tolist()) for s in shapes.SPLITS
    }
    assert not (
        keys["train"] & keys["val"] or keys["train"] & keys["test"] or keys["val"] & keys["test"]
    )


@pytest.mark.parametrize("n_images", [12, 100, 1_001])
def test_every_class_appears_and_splits_are_balanced(n_images):
    data = Shapes("train", n_images=n_images)
    counts = Counter(data.labels)
    assert set(counts) == set(range(len(SHAPES)))
    assert max(counts.values()) - min(counts.values()) <= 1
    assert data.classes == list(SHAPES) and len(data.classes) >= 10


def test_labels_are_shuffled_and_depend_on_seed_and_split():
    train = Shapes("train").labels
    assert train[:12] != list(range(12))
    assert train != Shapes("train", seed=1).labels
    assert Shapes("val").labels != train[:1_000]


def test_labels_match_items_and_the_drawn_class():
    data = Shapes("val", image_size=32)
    assert [data[i][1] for i in range(30)] == data.labels[:30]
    # the label decides the object: the same scene with another class differs
    swapped = Shapes("val", image_size=32, classes=list(reversed(SHAPES)))
    assert distinct(data.images(range(30)), swapped.images(range(30))).diagonal().min() > 0


def test_class_subsets():
    data = Shapes("test", classes=["circle", "star", "house"], n_images=30)
    assert data.classes == ["circle", "star", "house"]
    assert Counter(data.labels) == {0: 10, 1: 10, 2: 10}
    assert data.images(range(3)).shape == (3, 3, 64, 64)


def test_one_scene_at_every_size():
    small = Shapes("val", image_size=24).images(range(30))
    large = Shapes("val", image_size=72).images(range(30))
    shrunk = F.interpolate(large, size=24, mode="area")
    gaps = distinct(small, shrunk)
    assert gaps.diagonal().max() < 0.05  # the same picture, only sharper
    assert (gaps + torch.eye(30)).min() > 2 * gaps.diagonal().max()  # closer than any other


def test_objects_contrast_with_their_background():
    scene = shapes._scene(shapes._keys(0, "train", 0, np.arange(5_000)))
    gap = (scene["colour"] - scene["background"]).norm(dim=1)
    assert gap.min() > 0.4
    assert set(scene["kind"].tolist()) == set(range(len(shapes.BACKGROUNDS)))
    with_clutter = (scene["n_marks"] > 0).float().mean()
    assert 0.2 < with_clutter < 0.5  # occasional, not everywhere
    assert scene["scale"].min() >= 0.35 and scene["scale"].max() <= 0.7


def test_class_silhouettes_fit_the_unit_disc_and_differ():
    grid = torch.linspace(-1.2, 1.2, 121)
    x, y = grid.view(1, 1, -1).expand(1, 121, 121), grid.view(1, -1, 1).expand(1, 121, 121)
    radius = torch.sqrt(x**2 + y**2)
    masks = {}
    for name, shape in SHAPES.items():
        inside = shape(x, y) < 0
        assert not inside[radius > 1.05].any(), name
        assert 0.15 < inside.float().sum() / (radius <= 1).sum() < 0.8, name
        masks[name] = inside
    for a, b in itertools.combinations(SHAPES, 2):
        iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
        assert iou < 0.85, (a, b)


def test_signed_distances_are_distances_near_the_edge():
    grid = torch.linspace(-1.2, 1.2, 161)
    x, y = grid.view(1, 1, -1).expand(1, 161, 161), grid.view(1, -1, 1).expand(1, 161, 161)
    step = float(grid[1] - grid[0])
    for name, shape in SHAPES.items():
        d = shape(x, y)
        gx = (d[..., 2:, 1:-1] - d[..., :-2, 1:-1]) / (2 * step)
        gy = (d[..., 1:-1, 2:] - d[..., 1:-1, :-2]) / (2 * step)
        slope = torch.sqrt(gx**2 + gy**2)[d[..., 1:-1, 1:-1].abs() < 0.03]
        assert slope.median() == pytest.approx(1, abs=0.05), name  # 1-px soft edges everywhere


def test_pickles():
    data = Shapes("val", image_size=32, seed=5)
    copy = pickle.loads(pickle.dumps(data))
    assert torch.equal(copy.images(range(5)), data.images(range(5)))
    assert copy.labels == data.labels


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="split"):
        Shapes("training")
    with pytest.raises(ValueError, match="at least 8"):
        Shapes(image_size=4)
    with pytest.raises(TypeError, match="image_size"):
        Shapes(image_size=32.0)
    with pytest.raises(TypeError, match="seed"):
        Shapes(seed="0")
    with pytest.raises(ValueError, match="n_images"):
        Shapes(n_images=0)
    with pytest.raises(ValueError, match="unknown"):
        Shapes(classes=["circle", "dodecahedron"])
    with pytest.raises(ValueError, match="distinct"):
        Shapes(classes=["circle", "circle"])
    data = Shapes("val")
    with pytest.raises(IndexError):
        data[1_000]
    with pytest.raises(TypeError):
        data[1.5]
    with pytest.raises(IndexError, match="lie in"):
        data.images([0, 1_000])
    with pytest.raises(TypeError, match="1-D"):
        data.images([[0, 1]])
    with pytest.raises(TypeError, match="ints"):
        data.images([0.5])


def test_grid_command_writes_a_png(tmp_path):
    from PIL import Image

    path = tmp_path / "grid.png"
    shapes.main(["--grid", str(path), "--image-size", "16", "--per-class", "3", "--split", "test"])
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (2 + 3 * 18, 2 + len(SHAPES) * 18)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
