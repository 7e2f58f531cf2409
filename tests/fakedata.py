"""Tiny copies of the paper's datasets, written in each dataset's real on-disk format.

Each writer puts files where the dataset's download would, under `root`, and returns
what it wrote (pixels, labels, names) so tests can compare the loaders against it.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

STL10_CLASSES = [
    "airplane",
    "bird",
    "car",
    "cat",
    "deer",
    "dog",
    "horse",
    "monkey",
    "ship",
    "truck",
]
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


def colour(label: int) -> tuple[int, int, int]:
    """A distinct flat colour per class, so decoded JPEGs can be told apart by mean."""
    rng = np.random.default_rng(label)
    return tuple(int(v) for v in rng.integers(30, 226, size=3))


def _labels(n_classes: int, per_class: int) -> np.ndarray:
    return np.tile(np.arange(n_classes), per_class)


def _pixels(rng: np.random.Generator, n: int, *shape: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def write_stl10(root: Path, train_per_class: int = 12, test_per_class: int = 3) -> dict:
    """`root/stl10_binary`: column-major uint8 image binaries, 1-based uint8 labels."""
    rng = np.random.default_rng(10)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    written = {}
    for part, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = _labels(10, per_class)
        images = _pixels(rng, len(labels), 3, 96, 96)  # [N, C, row, col]
        images.transpose(0, 1, 3, 2).tofile(folder / f"{part}_X.bin")
        (labels + 1).astype(np.uint8).tofile(folder / f"{part}_y.bin")
        written[part] = (images, labels)
    _pixels(rng, 2, 3, 96, 96).tofile(folder / "unlabeled_X.bin")
    (folder / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")
    (folder / "fold_indices.txt").write_text("0 1 2\n" * 10)
    return written


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as file:
        pickle.dump(obj, file, protocol=2)


def write_cifar10(root: Path, train_per_class: int = 10, test_per_class: int = 2) -> dict:
    """`root/cifar-10-batches-py`: five training batches, test_batch, batches.meta."""
    rng = np.random.default_rng(11)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_labels = _labels(10, train_per_class)
    train_images = _pixels(rng, len(train_labels), 3, 32, 32)
    chunks = np.array_split(np.arange(len(train_labels)), 5)
    for k, chunk in enumerate(chunks, start=1):
        _pickle(
            folder / f"data_batch_{k}",
            {
                "batch_label": f"training batch {k} of 5",
                "labels": train_labels[chunk].tolist(),
                "data": train_images[chunk].reshape(len(chunk), -1),
                "filenames": [f"img_{i}.png" for i in chunk],
            },
        )
    test_labels = _labels(10, test_per_class)
    test_images = _pixels(rng, len(test_labels), 3, 32, 32)
    _pickle(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": test_labels.tolist(),
            "data": test_images.reshape(len(test_labels), -1),
            "filenames": [f"test_{i}.png" for i in range(len(test_labels))],
        },
    )
    _pickle(
        folder / "batches.meta",
        {"num_cases_per_batch": 10000, "label_names": CIFAR10_CLASSES, "num_vis": 3072},
    )
    return {"train": (train_images, train_labels), "test": (test_images, test_labels)}


def write_cifar100(root: Path, train_per_class: int = 2, test_per_class: int = 1) -> dict:
    """`root/cifar-100-python`: train, test (fine and coarse labels) and meta."""
    rng = np.random.default_rng(12)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for part, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = _labels(100, per_class)
        images = _pixels(rng, len(labels), 3, 32, 32)
        _pickle(
            folder / part,
            {
                "filenames": [f"{part}_{i}.png" for i in range(len(labels))],
                "batch_label": f"{part} batch",
                "fine_labels": labels.tolist(),
                "coarse_labels": (labels // 5).tolist(),
                "data": images.reshape(len(labels), -1),
            },
        )
        written[part] = (images, labels)
    _pickle(
        folder / "meta",
        {
            "fine_label_names": [f"fine_{k:02d}" for k in range(100)],
            "coarse_label_names": [f"coarse_{k:02d}" for k in range(20)],
        },
    )
    return written


def write_mnist(root: Path, train_per_class: int = 12, test_per_class: int = 2) -> dict:
    """`root/MNIST/raw`: big-endian idx files (magic 2051 images, 2049 labels)."""
    rng = np.random.default_rng(13)
    folder = root / "MNIST" / "raw"
    folder.mkdir(parents=True)
    written = {}
    for prefix, part, per_class in (("train", "train", train_per_class), ("t10k", "test", test_per_class)):  # fmt: skip
        labels = _labels(10, per_class).astype(np.uint8)
        images = _pixels(rng, len(labels), 28, 28)
        header = struct.pack(">IIII", 2051, len(labels), 28, 28)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        header = struct.pack(">II", 2049, len(labels))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(header + labels.tobytes())
        written[part] = (images, labels.astype(np.int64))
    return written


def celeba_image(identity: int) -> Image.Image:
    """A 178x218 aligned-face stand-in: the identity's colour in the centre square,
    black bands top and bottom that a maximal centre crop must remove."""
    pixels = np.zeros((218, 178, 3), dtype=np.uint8)
    pixels[20:198] = colour(identity)
    return Image.fromarray(pixels)


def write_celeba(
    root: Path, people: dict[str, list[int]] | None = None, per_person: int = 2
) -> dict:
    """`root/celeba`: img_align_celeba/NNNNNN.jpg and the partition and identity lists."""
    people = people or {"train": [7, 3, 12], "val": [40, 41], "test": [99]}
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    partition, identity, files = [], [], {}
    number = 0
    for part_code, part in enumerate(("train", "val", "test")):
        for person in people[part]:
            for _ in range(per_person):
                number += 1
                name = f"{number:06d}.jpg"
                celeba_image(person).save(folder / "img_align_celeba" / name, quality=95)
                partition.append(f"{name} {part_code}")
                identity.append(f"{name} {person}")
                files.setdefault(part, []).append((name, person))
    (folder / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")
    (folder / "identity_CelebA.txt").write_text("\n".join(identity) + "\n")
    return files


def gradient_image(
    label: int, width: int = 16, height: int = 12, grey: bool = False
) -> Image.Image:
    """A class-coloured image darkening left to right (so flips and crops show)."""
    ramp = np.linspace(1.0, 0.3, width)[None, :, None]
    pixels = (np.asarray(colour(label))[None, None, :] * ramp).repeat(height, axis=0)
    image = Image.fromarray(pixels.astype(np.uint8))
    return image.convert("L") if grey else image


def write_caltech101(root: Path, sizes: list[int] | None = None) -> dict[str, int]:
    """`root/caltech101/101_ObjectCategories/<class>/image_NNNN.jpg`, 101 classes plus
    BACKGROUND_Google; every fifth class has one greyscale image as the real data does."""
    sizes = sizes or [7 + (k * 5) % 9 for k in range(101)]
    names = ["Faces", "Faces_easy", "Leopards", "Motorbikes", "accordion", "airplanes"]
    names += [f"object_{k:03d}" for k in range(101 - len(names))]
    folder = root / "caltech101" / "101_ObjectCategories"
    counts = {}
    for label, (name, size) in enumerate(zip(sorted(names), sizes, strict=True)):
        (folder / name).mkdir(parents=True)
        for k in range(1, size + 1):
            grey = k == 1 and label % 5 == 0
            gradient_image(label, grey=grey).save(folder / name / f"image_{k:04d}.jpg", quality=95)
        counts[name] = size
    (folder / "BACKGROUND_Google").mkdir()
    for k in range(1, 4):
        gradient_image(500 + k).save(folder / "BACKGROUND_Google" / f"image_{k:04d}.jpg")
    return counts


def write_tinyimagenet(
    root: Path, n_classes: int = 4, train_per_class: int = 10, val_per_class: int = 3
) -> dict:
    """`root/tiny-imagenet-200` as unzipped: wnids.txt, words.txt, train/<wnid>/images,
    val/images with val/val_annotations.txt, and unlabelled test/images."""
    folder = root / "tiny-imagenet-200"
    wnids = [f"n{1000000 + 17 * k:08d}" for k in range(n_classes)]
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")
    words = [f"{wnid}\tthing {k}, other name" for k, wnid in enumerate(wnids)]
    words.append("n99999999\tnot in the dataset")
    (folder / "words.txt").write_text("\n".join(words) + "\n")
    square = lambda label: Image.new("RGB", (64, 64), colour(label))  # noqa: E731
    for label, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        boxes = []
        for k in range(train_per_class):
            square(label).save(images / f"{wnid}_{k}.JPEG")
            boxes.append(f"{wnid}_{k}.JPEG\t0\t0\t63\t63")
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("\n".join(boxes) + "\n")
    (folder / "val" / "images").mkdir(parents=True)
    annotations, val_labels = [], {}
    for k in range(n_classes * val_per_class):
        label = (k * 3) % n_classes
        name = f"val_{k}.JPEG"
        square(label).save(folder / "val" / "images" / name)
        annotations.append(f"{name}\t{wnids[label]}\t0\t0\t63\t63")
        val_labels[name] = label
    (folder / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    (folder / "test" / "images").mkdir(parents=True)
    square(0).save(folder / "test" / "images" / "test_0.JPEG")
    return {"wnids": wnids, "val_labels": val_labels}


def write_imagefolder(
    root: Path, classes: list[str], per_class: int, splits: tuple[str, ...] = (), size: int = 20
) -> None:
    """`root/<split>/<class>/k.png` for each split given, else `root/<class>/k.png`."""
    for split in splits or ("",):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(per_class):
                Image.new("RGB", (size, size), colour(label)).save(folder / f"{k}.png")


def write_run(folder: Path, **config) -> Path:
    """A freshly initialised self-play run saved as ``folder/best.pt`` (a real checkpoint
    of untrained agents, for the study tools); ``config`` overrides SelfPlayConfig fields."""
    from agents.checkpoint import game_settings, save_checkpoint
    from agents.config import SelfPlayConfig
    from agents.experiment import make_agents, make_game

    config = SelfPlayConfig(**{"dataset": "shapes", "n_distractors": 5, **config})
    size = (config.image_size, config.image_size)
    sender, receiver = make_agents(config, size, load_weights=False)
    payload = {
        "config": config.to_dict(),
        "game": game_settings(make_game(config, "val")),
        "sender": sender.state_dict(),
        "receiver": receiver.state_dict(),
    }
    save_checkpoint(folder / "best.pt", payload)
    return folder


def write_photo_folder(
    root: Path, counts: dict[str, int], n_classes: int = 3, seed: int = 0
) -> Path:
    """An ``imagefolder:`` dataset of random 16 px photos: ``counts[split]`` images per
    class in ``root/split/class<c>/<i>.png``."""
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        for c in range(n_classes):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / f"class{c}" / f"{i}.png")
    return root
