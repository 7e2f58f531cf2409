"""The paper's datasets and `imagefolder`, loaded through the real code paths from tiny
files written in each dataset's real on-disk format (see fakedata.py)."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from pathlib import Path

import fakedata
import pytest
import torch

from sketchenv.datasets import (
    caltech101,
    celeba,
    cifar10,
    cifar100,
    common,
    imagefolder,
    mnist,
    stl10,
    tinyimagenet,
)
from sketchenv.datasets.common import DatasetNotFoundError


def ids(dataset) -> set:
    """What identifies an item across splits: its array row or its file."""
    return set(dataset.rows) if hasattr(dataset, "rows") else set(dataset.paths)


def check_items(dataset, size: int, n: int = 3) -> None:
    for i in (0, len(dataset) // 2, len(dataset) - 1)[:n]:
        image, label = dataset[i]
        assert image.dtype == torch.float32 and image.shape == (3, size, size)
        assert image.min() >= 0 and image.max() <= 1
        assert label == dataset.labels[i] and 0 <= label < len(dataset.classes)


def check_splits(load, n_total: int, **kwargs) -> dict:
    """Three disjoint splits covering `n_total` (train+val share a source with test apart)."""
    splits = {split: load(split, seed=3, **kwargs) for split in common.SPLITS}
    assert not ids(splits["train"]) & ids(splits["val"])
    again = load("val", seed=3, **kwargs)
    assert again.labels == splits["val"].labels and ids(again) == ids(splits["val"])
    assert ids(load("val", seed=4, **kwargs)) != ids(splits["val"])
    assert sum(len(d) for d in splits.values()) == n_total
    return splits


# ---- common helpers ------------------------------------------------------------------


def test_stratified_split_is_disjoint_complete_seeded_and_proportional():
    labels = [k % 3 for k in range(60)] + [3] * 7
    parts = common.stratified_split(labels, [0.7, 0.15, 0.15], seed=1)
    assert sorted(i for part in parts for i in part) == list(range(len(labels)))
    assert parts == common.stratified_split(labels, [0.7, 0.15, 0.15], seed=1)
    assert parts != common.stratified_split(labels, [0.7, 0.15, 0.15], seed=2)
    for c, n in Counter(labels).items():
        counts = [sum(labels[i] == c for i in part) for part in parts]
        assert counts == ([14, 3, 3] if n == 20 else [5, 1, 1])


def test_holdout_takes_exactly_n_stratified():
    labels = [0] * 50 + [1] * 30 + [2] * 20
    kept, held = common.holdout(labels, 10, seed=0)
    assert len(held) == 10 and not set(kept) & set(held) and len(kept) + len(held) == 100
    assert Counter(labels[i] for i in held) == {0: 5, 1: 3, 2: 2}
    with pytest.raises(ValueError, match="hold out"):
        common.holdout(labels, 100, seed=0)


def test_fit_square_crops_centre_repeats_grey_and_resizes():
    pixels = torch.zeros(1, 10, 6, dtype=torch.uint8)
    pixels[:, 2:8] = 255  # the centred 6x6 square is white, the bands black
    image = common.fit_square(pixels, 6)
    assert image.shape == (3, 6, 6) and torch.all(image == 1)
    assert common.fit_square(pixels, 3).shape == (3, 3, 3)
    ramp = torch.arange(4, dtype=torch.uint8).repeat(3, 4, 1)
    assert torch.equal(
        common.fit_square(ramp, 4, flip=True)[0, 0] * 255, torch.tensor([3.0, 2, 1, 0])
    )


def test_bad_arguments_are_refused_early(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        cifar10.load("validation", root=str(tmp_path))
    with pytest.raises(TypeError, match="image_size"):
        cifar10.load("train", image_size=32.0, root=str(tmp_path))
    with pytest.raises(ValueError, match="image_size"):
        cifar10.load("train", image_size=0, root=str(tmp_path))


# ---- STL-10 --------------------------------------------------------------------------


def test_stl10_paper_split_pixels_and_classes(tmp_path):
    written = fakedata.write_stl10(tmp_path)
    splits = check_splits(stl10.load, 120 + 30, root=str(tmp_path))
    train, val, test = splits["train"], splits["val"], splits["test"]
    assert (len(train), len(val), len(test)) == (20, 100, 30)
    assert Counter(val.labels) == dict.fromkeys(range(10), 10)
    assert train.classes == fakedata.STL10_CLASSES
    check_items(test, 96)
    # row-major pixels exactly as written (the binaries are column-major)
    images, labels = written["train"]
    image, label = val[5]
    row = val.rows[5]
    assert label == labels[row]
    assert torch.equal(image, torch.from_numpy(images[row]).float() / 255)
    assert stl10.load("test", image_size=32, root=str(tmp_path))[0][0].shape == (3, 32, 32)


def test_stl10_refuses_unlabelled_split_and_truncated_files(tmp_path):
    fakedata.write_stl10(tmp_path)
    with pytest.raises(ValueError, match="no labels"):
        stl10.load("unlabeled", root=str(tmp_path))
    with open(tmp_path / "stl10_binary" / "test_X.bin", "ab") as file:
        file.write(b"\0" * 7)
    with pytest.raises(ValueError, match="truncated or corrupted"):
        stl10.load("test", root=str(tmp_path))


def test_stl10_pickles_without_its_memory_map(tmp_path):
    fakedata.write_stl10(tmp_path)
    test = stl10.load("test", root=str(tmp_path))
    first = test[0][0]
    copy = pickle.loads(pickle.dumps(test))
    assert len(pickle.dumps(test)) < 100_000  # the path, not 30 images
    assert torch.equal(copy[0][0], first)


# ---- CIFAR ---------------------------------------------------------------------------


def test_cifar10_splits_pixels_and_classes(tmp_path):
    written = fakedata.write_cifar10(tmp_path, train_per_class=10, test_per_class=2)
    splits = check_splits(cifar10.load, 100 + 20, root=str(tmp_path))
    assert Counter(splits["val"].labels) == dict.fromkeys(range(10), 1)
    assert splits["test"].classes == fakedata.CIFAR10_CLASSES
    check_items(splits["train"], 32)
    images, labels = written["train"]
    image, label = splits["train"][7]
    row = splits["train"].rows[7]
    assert label == labels[row] and torch.equal(image, torch.from_numpy(images[row]).float() / 255)


def test_cifar100_uses_the_fine_labels(tmp_path):
    written = fakedata.write_cifar100(tmp_path, train_per_class=2, test_per_class=1)
    splits = check_splits(cifar100.load, 200 + 100, root=str(tmp_path))
    test = splits["test"]
    assert len(test.classes) == 100 and test.classes[3] == "fine_03"
    assert test.labels == written["test"][1].tolist()
    check_items(test, 32)


# ---- MNIST ---------------------------------------------------------------------------


def test_mnist_reads_idx_files_and_repeats_grey(tmp_path):
    written = fakedata.write_mnist(tmp_path, train_per_class=12, test_per_class=2)
    splits = check_splits(mnist.load, 120 + 20, root=str(tmp_path))
    assert len(splits["val"]) == 10 and len(splits["test"]) == 20
    test = splits["test"]
    image, label = test[4]
    images, labels = written["test"]
    assert image.shape == (3, 28, 28) and label == labels[4]
    assert torch.equal(image[0], torch.from_numpy(images[4]).float() / 255)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert mnist.load("train", image_size=32, root=str(tmp_path))[0][0].shape == (3, 32, 32)


# ---- CelebA --------------------------------------------------------------------------


def test_celeba_official_splits_identities_and_centre_crop(tmp_path):
    files = fakedata.write_celeba(tmp_path)
    splits = {s: celeba.load(s, root=str(tmp_path)) for s in common.SPLITS}
    for split, dataset in splits.items():
        expected = [name for name, _ in files[split]]
        assert [Path(p).name for p in dataset.paths] == expected
    train = splits["train"]
    assert train.classes == ["3", "7", "12"]  # identities present, numeric order
    image, label = train[0]  # 000001.jpg shows identity 7
    assert image.shape == (3, 64, 64) and train.classes[label] == "7"
    # the maximal centre crop drops the black bands: every pixel is the identity colour
    target = torch.tensor(fakedata.colour(7), dtype=torch.float32)[:, None, None] / 255
    assert (image - target).abs().max() < 0.05
    assert celeba.load("val", image_size=112, root=str(tmp_path))[0][0].shape == (3, 112, 112)


def test_celeba_missing_files_name_what_is_needed(tmp_path):
    fakedata.write_celeba(tmp_path)
    (tmp_path / "celeba" / "identity_CelebA.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"identity_CelebA\.txt.*gdown"):
        celeba.load("train", root=str(tmp_path))


# ---- Caltech-101 ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def caltech_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("caltech")
    return root, fakedata.write_caltech101(root)


def test_caltech101_classes_and_stratified_70_15_15(caltech_root):
    root, counts = caltech_root
    load = lambda split, **kw: caltech101.load(split, root=str(root), balance=False, **kw)  # noqa: E731
    splits = check_splits(load, sum(counts.values()))
    train = splits["train"]
    assert len(train.classes) == 101 and "BACKGROUND_Google" not in train.classes
    assert {"Faces", "Faces_easy"} <= set(train.classes)
    for label, name in enumerate(train.classes):
        n = counts[name]
        got = [splits[s].labels.count(label) for s in common.SPLITS]
        assert sum(got) == n and abs(got[0] - 0.7 * n) < 1 and abs(got[1] - 0.15 * n) < 1
    assert not ids(splits["val"]) & ids(splits["test"])
    check_items(splits["test"], 128)


def test_caltech101_training_set_is_balanced_with_fixed_augmented_copies(caltech_root):
    root, _ = caltech_root
    plain = caltech101.load("train", root=str(root), balance=False, seed=5)
    train = caltech101.load("train", root=str(root), seed=5, image_size=16)
    per_class = Counter(train.labels)
    assert set(per_class.values()) == {max(Counter(plain.labels).values())}
    assert len(per_class) == 101
    assert set(train.paths) == set(plain.paths)  # copies only of training images
    copies = [i for i, view in enumerate(train.views) if view is not None]
    assert len(copies) == len(train) - len(plain)
    index = copies[0]
    original = train.paths.index(train.paths[index])
    assert train.views[original] is None
    assert not torch.equal(train[index][0], train[original][0])  # augmented
    assert torch.equal(train[index][0], train[index][0])  # and fixed
    again = caltech101.load("train", root=str(root), seed=5, image_size=16)
    assert again.paths == train.paths and again.views == train.views


def test_caltech101_grey_images_become_rgb(caltech_root):
    root, _ = caltech_root
    grey = 0
    for split in common.SPLITS:
        dataset = caltech101.load(split, root=str(root), image_size=24, balance=False)
        for i, path in enumerate(dataset.paths):
            if dataset.labels[i] % 5 == 0 and path.endswith("image_0001.jpg"):
                image, _ = dataset[i]
                assert image.shape == (3, 24, 24) and torch.equal(image[0], image[2])
                grey += 1
    assert grey == 21  # one per fifth class


# ---- TinyImageNet --------------------------------------------------------------------


def test_tinyimagenet_val_from_train_test_from_annotations(tmp_path):
    written = fakedata.write_tinyimagenet(tmp_path, n_classes=4, train_per_class=10)
    splits = check_splits(tinyimagenet.load, 40 + 12, root=str(tmp_path))
    train, val, test = splits["train"], splits["val"], splits["test"]
    assert Counter(val.labels) == dict.fromkeys(range(4), 1)
    assert train.wnids == sorted(written["wnids"]) and train.classes[0] == "thing 0"
    assert all("/train/" in p for p in train.paths + val.paths)
    for path, label in zip(test.paths, test.labels, strict=True):
        assert train.wnids[label] == written["wnids"][written["val_labels"][Path(path).name]]
    image, label = test[2]
    target = torch.tensor(fakedata.colour(label), dtype=torch.float32)[:, None, None] / 255
    assert image.shape == (3, 64, 64) and (image - target).abs().max() < 0.05


# ---- missing files and downloads -----------------------------------------------------

LOADERS = [stl10, cifar10, cifar100, mnist, celeba, caltech101, tinyimagenet]


@pytest.mark.parametrize("module", LOADERS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_missing_dataset_names_path_files_and_fix(module, tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        module.load("train", root=str(tmp_path / "nowhere"))
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message and "download=True" in message
    assert isinstance(error.value, FileNotFoundError)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.mark.parametrize("module", [stl10, cifar10, mnist, tinyimagenet, caltech101])
def test_failed_download_becomes_a_clear_error(module, tmp_path, no_network):
    with pytest.raises(DatasetNotFoundError, match="download"):
        module.load("train", root=str(tmp_path), download=True)


def serve(monkeypatch, payload: bytes) -> None:
    """Answer every download with `payload`, as a server would."""

    class Response(io.BytesIO):
        def __init__(self, request):
            super().__init__(payload)
            self.url = request.full_url
            self.length = len(payload)

    monkeypatch.setattr(urllib.request, "urlopen", Response)


def test_tinyimagenet_download_unpacks_the_zip(tmp_path, monkeypatch):
    fakedata.write_tinyimagenet(tmp_path / "source", n_classes=2, train_per_class=10)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted((tmp_path / "source").rglob("*")):
            archive.write(path, path.relative_to(tmp_path / "source"))
    payload = buffer.getvalue()
    serve(monkeypatch, payload)
    monkeypatch.setattr(tinyimagenet, "MD5", hashlib.md5(payload).hexdigest())
    test = tinyimagenet.load("test", root=str(tmp_path / "data"), download=True)
    assert len(test) == 6 and (tmp_path / "data" / "tiny-imagenet-200.zip").is_file()


def test_cifar10_download_checks_md5_and_unpacks(tmp_path, monkeypatch):
    fakedata.write_cifar10(tmp_path / "source", train_per_class=10, test_per_class=1)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(tmp_path / "source" / "cifar-10-batches-py", "cifar-10-batches-py")
    payload = buffer.getvalue()
    serve(monkeypatch, payload)
    with pytest.raises(DatasetNotFoundError, match="corrupted"):  # torchvision's real md5
        cifar10.load("test", root=str(tmp_path / "data"), download=True)
    monkeypatch.setattr(cifar10.CIFAR10, "tgz_md5", hashlib.md5(payload).hexdigest())
    (tmp_path / "data" / "cifar-10-python.tar.gz").unlink()
    assert len(cifar10.load("test", root=str(tmp_path / "data"), download=True)) == 10


# ---- imagefolder ---------------------------------------------------------------------


def test_imagefolder_with_split_folders(tmp_path):
    fakedata.write_imagefolder(tmp_path, ["b", "a"], 3, splits=("train", "val"), size=20)
    fakedata.write_imagefolder(tmp_path / "more", ["c"], 1, splits=("train",))
    (tmp_path / "train" / "c").mkdir()  # a class only present in train, empty
    train = imagefolder.load(tmp_path, "train")
    val = imagefolder.load(str(tmp_path), "val")
    assert train.classes == val.classes == ["a", "b", "c"]
    assert len(train) == len(val) == 6 and Counter(val.labels) == {0: 3, 1: 3}
    check_items(val, 20)  # default size: the first image's
    assert imagefolder.load(tmp_path, "val", image_size=8)[0][0].shape == (3, 8, 8)
    with pytest.raises(FileNotFoundError, match=r"test does not exist.*train, val"):
        imagefolder.load(tmp_path, "test")


def test_imagefolder_flat_layout_is_split_by_seed(tmp_path):
    fakedata.write_imagefolder(tmp_path, ["x", "y", "z"], 10)
    splits = check_splits(lambda split, **kw: imagefolder.load(tmp_path, split, **kw), 30)
    assert [len(splits[s]) for s in common.SPLITS] == [24, 3, 3]
    assert Counter(splits["test"].labels) == {0: 1, 1: 1, 2: 1}


def test_imagefolder_refuses_unlabelled_and_missing_folders(tmp_path):
    fakedata.write_imagefolder(tmp_path, ["x"], 2, splits=("train", "test"))
    (tmp_path / "test" / "x" / "0.png").rename(tmp_path / "test" / "loose.png")
    with pytest.raises(ValueError, match="need labels"):
        imagefolder.load(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        imagefolder.load(tmp_path / "missing", "train")


def test_imagefolder_reads_the_real_cifar10_subset(cifar_subset):
    val = imagefolder.load(cifar_subset, "val")
    assert len(val.classes) == 10 and val.classes[0] == "airplane"
    assert Counter(val.labels)[3] == len(val) // 10
    image, label = val[len(val) - 1]
    assert image.shape == (3, 32, 32) and label == 9 and image.std() > 0.02


# ---- batch reads and games ----------------------------------------------------------


def test_batch_reads_match_item_reads(tmp_path, caltech_root):
    fakedata.write_mnist(tmp_path)
    fakedata.write_stl10(tmp_path)
    datasets = [
        mnist.load("test", root=str(tmp_path)),  # grey array, native size: one array read
        mnist.load("test", image_size=20, root=str(tmp_path)),  # resized
        stl10.load("val", root=str(tmp_path)),  # memory map
        caltech101.load("train", image_size=16, root=str(caltech_root[0])),  # files, copies
    ]
    for dataset in datasets:
        ids = torch.tensor([3, 0, len(dataset) - 1, 3])
        batch = dataset.images(ids)
        size = dataset.image_size
        assert batch.dtype == torch.uint8 and batch.shape == (4, 3, size, size)
        for image, i in zip(batch, ids, strict=True):
            expected = (dataset[int(i)][0] * 255).round().to(torch.uint8)
            assert torch.equal(image, expected)


def test_games_sample_from_the_paper_datasets(tmp_path, caltech_root):
    game_module = pytest.importorskip("sketchenv.game")
    fakedata.write_stl10(tmp_path)
    val = stl10.load("val", root=str(tmp_path))
    game = game_module.SketchGame(val, "oo-different", seed=0)
    batch = game.sample(2)
    assert game.n_classes == 10 and batch.candidates.shape == (2, 10, 3, 96, 96)
    assert torch.equal(batch.sender_labels, batch.candidate_labels)
    caltech = caltech101.load("train", image_size=16, root=str(caltech_root[0]))
    batch = game_module.SketchGame(caltech, "original", n_distractors=9).sample(1)
    assert batch.candidates.shape == (1, 10, 3, 16, 16)


# ---- through the registry ------------------------------------------------------------


def test_registry_loads_the_paper_datasets(tmp_path):
    datasets = pytest.importorskip("sketchenv.datasets")
    if not hasattr(datasets, "make_dataset"):
        pytest.skip("sketchenv.datasets.make_dataset not written yet")
    fakedata.write_cifar10(tmp_path)
    fakedata.write_mnist(tmp_path)
    fakedata.write_imagefolder(tmp_path / "mine", ["p", "q"], 5)
    assert {"stl10", "cifar10", "cifar100", "mnist", "celeba", "caltech101", "tinyimagenet"} <= set(
        datasets.DATASETS
    )
    val = datasets.make_dataset("cifar10", "val", root=str(tmp_path), seed=1)
    assert val.labels == cifar10.load("val", root=str(tmp_path), seed=1).labels
    assert datasets.make_dataset("mnist", "test", root=str(tmp_path))[0][0].shape == (3, 28, 28)
    mine = datasets.make_dataset(f"imagefolder:{tmp_path / 'mine'}", "train", image_size=12)
    assert mine.classes == ["p", "q"] and mine[0][0].shape == (3, 12, 12)
    assert len(mine) == 8
