"""The dataset registry: `make_dataset`, `labels_of`, `classes_of`."""

import sys
import types

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, IterableDataset, Subset, TensorDataset

from sketchenv.datasets import DATASETS, SPLITS, classes_of, labels_of, make_dataset
from sketchenv.datasets.shapes import Shapes


@pytest.fixture
def recorder(monkeypatch):
    """Replace the modules of `cifar10` and `imagefolder` by ones recording their calls."""
    calls = []
    for name in ("cifar10", "imagefolder"):
        module = types.ModuleType(f"sketchenv.datasets.{name}")
        module.load = lambda *args, _name=name, **kwargs: calls.append((_name, args, kwargs))
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return calls


def test_names():
    assert DATASETS == (
        "shapes",
        "stl10",
        "cifar10",
        "cifar100",
        "mnist",
        "celeba",
        "caltech101",
        "tinyimagenet",
    )
    assert SPLITS == ("train", "val", "test")


def test_shapes_by_name():
    data = make_dataset("shapes")
    assert isinstance(data, Shapes) and (len(data), data.image_size, data.split) == (
        10_000,
        64,
        "train",
    )
    val = make_dataset("Shapes", "val", image_size=32, seed=7)
    assert (len(val), val.image_size, val.seed) == (1_000, 32, 7)
    assert torch.equal(val[3][0], Shapes("val", image_size=32, seed=7)[3][0])


def test_arguments_reach_the_dataset_module(recorder):
    make_dataset("CIFAR10", "test", image_size=48, root="/data", download=True, seed=3)
    make_dataset("imagefolder:/photos/mine", "val", image_size=40, seed=2)
    assert recorder == [
        ("cifar10", ("test",), {"image_size": 48, "root": "/data", "download": True, "seed": 3}),
        ("imagefolder", ("/photos/mine", "val"), {"image_size": 40, "seed": 2}),
    ]


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'") as error:
        make_dataset("imagenet")
    assert all(name in str(error.value) for name in DATASETS)
    assert "imagefolder:PATH" in str(error.value)


def test_bad_arguments_raise_clear_errors(recorder):
    with pytest.raises(ValueError, match="split"):
        make_dataset("shapes", "validation")
    with pytest.raises(ValueError, match="split"):
        make_dataset("imagefolder:/photos", "dev")
    with pytest.raises(ValueError, match="imagefolder:PATH"):
        make_dataset("imagefolder:")
    with pytest.raises(TypeError, match="image_size"):
        make_dataset("cifar10", image_size="32")
    with pytest.raises(ValueError, match="image_size"):
        make_dataset("cifar10", image_size=0)
    with pytest.raises(TypeError, match="name"):
        make_dataset(None)
    assert recorder == []  # refused before any module was asked


def test_imagefolder_of_real_photos(cifar_subset):
    val = make_dataset(f"imagefolder:{cifar_subset}", "val", image_size=32)
    assert len(val) == 1_000 and len(classes_of(val)) == 10
    image, label = val[0]
    assert image.shape == (3, 32, 32) and label == labels_of(val)[0]


def test_labels_of_reads_stored_labels_without_loading_images(monkeypatch):
    data = Shapes("val")
    monkeypatch.setattr(Shapes, "images", lambda *_: pytest.fail("loaded an image"))
    assert labels_of(data) == data.labels
    assert labels_of(Subset(data, [5, 2, 9])) == [data.labels[i] for i in (5, 2, 9)]
    assert classes_of(Subset(data, [0])) == data.classes


class Targets(Dataset):
    """torchvision style: labels in a numpy `targets` array, no `labels`."""

    def __init__(self, targets):
        self.targets = targets

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        raise AssertionError("labels_of should not load items")


def test_labels_of_reads_torchvision_targets():
    assert labels_of(Targets(np.array([2, 0, 1], dtype=np.int64))) == [2, 0, 1]
    assert labels_of(Targets(torch.tensor([1, 1]))) == [1, 1]


def test_labels_of_iterates_plain_datasets_once():
    images = torch.rand(5, 3, 8, 8)
    data = TensorDataset(images, torch.tensor([3, 0, 3, 1, 0]))
    assert labels_of(data) == [3, 0, 3, 1, 0]
    assert all(type(label) is int for label in labels_of(data))
    assert classes_of(data) == ["0", "1", "2", "3"]


def test_labels_of_refuses_bad_labels():
    with pytest.raises(TypeError, match="integer class indices"):
        labels_of(TensorDataset(torch.rand(2, 3, 4, 4), torch.tensor([0.0, 1.5])))
    with pytest.raises(ValueError, match=">= 0"):
        labels_of(Targets([0, -1]))

    class Short(Targets):
        def __len__(self):
            return 3

    with pytest.raises(ValueError, match="2 labels for 3 items"):
        labels_of(Short([0, 1]))

    class Stream(IterableDataset):
        def __iter__(self):
            yield torch.zeros(3, 4, 4), 0

    with pytest.raises(TypeError, match="map-style"):
        labels_of(Stream())
