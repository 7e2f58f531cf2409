"""The batched game core: variant rules, epochs, determinism, rendering, scoring, errors."""

import math
import pickle

import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from sketchenv.game import GAMES, GameBatch, SketchGame
from sketchenv.raster import render_strokes


class ToyImages(Dataset):
    """Random images, one seed per item, `labels[i] = i % n_classes` unless given."""

    def __init__(self, n=60, n_classes=6, size=8, labels=None, with_labels=True):
        self.classes = [f"class{c}" for c in range(n_classes)]
        self._labels = list(labels) if labels is not None else [i % n_classes for i in range(n)]
        self.size = size
        if with_labels:
            self.labels = self._labels
        self.reads = 0

    def __len__(self):
        return len(self._labels)

    def __getitem__(self, i):
        self.reads += 1
        g = torch.Generator().manual_seed(i)
        return torch.rand(3, self.size, self.size, generator=g), self._labels[i]


def quantised(dataset, ids):
    return torch.stack([(dataset[int(i)][0] * 255).round() / 255 for i in ids.flatten()]).view(
        *ids.shape, 3, dataset.size, dataset.size
    )


def make(game, **kwargs):
    dataset = kwargs.pop("dataset", None) or ToyImages()
    if game == "original":
        kwargs.setdefault("n_distractors", 9)
    return SketchGame(dataset, game, **kwargs)


def check_rules(game: SketchGame, batch: GameBatch):
    n_blocks, n_candidates = batch.candidate_ids.shape
    assert n_candidates == game.n_candidates
    assert batch.sender_images.shape == (n_blocks, n_candidates, 3, *game.image_size)
    assert batch.candidates.shape == (n_blocks, n_candidates, 3, *game.image_size)
    assert torch.equal(batch.targets, torch.arange(n_candidates).expand(n_blocks, -1))
    labels = game.labels
    assert torch.equal(batch.candidate_labels, labels[batch.candidate_ids])
    assert torch.equal(batch.sender_labels, labels[batch.sender_ids])
    for block in range(n_blocks):
        assert batch.candidate_ids[block].unique().numel() == n_candidates
    if game.game == "original":
        assert torch.equal(batch.sender_ids, batch.candidate_ids)
    else:
        for block in range(n_blocks):  # one candidate per class
            assert batch.candidate_labels[block].unique().numel() == n_candidates
        target_ids = batch.candidate_ids.gather(1, batch.targets)
        assert torch.equal(batch.sender_labels, labels[target_ids])
        if game.game == "oo-same":
            assert torch.equal(batch.sender_ids, target_ids)
        else:
            assert (batch.sender_ids != target_ids).all()
    dataset = game.dataset
    assert torch.equal(batch.candidates, quantised(dataset, batch.candidate_ids))
    assert torch.equal(batch.sender_images, quantised(dataset, batch.sender_ids))


def within_sd(counts: torch.Tensor, n: int, p: float, k: float = 4.5) -> bool:
    """Every count within ``k`` binomial standard deviations of ``n p``."""
    return bool(((counts - n * p).abs() < k * math.sqrt(n * p * (1 - p))).all())


@pytest.mark.parametrize("name", GAMES)
def test_sampled_blocks_follow_the_rules(name):
    game = make(name)
    for _ in range(20):
        check_rules(game, game.sample(3))


@pytest.mark.parametrize("name", GAMES)
def test_epoch_follows_the_rules_and_covers_the_dataset(name):
    dataset = ToyImages(n=60, n_classes=6)
    game = make(name, dataset=dataset)
    batches = list(game.epoch(4))
    assert game.blocks_per_epoch == 60 // game.n_candidates  # 6 (original) or 10 (OO)
    sizes = [b.candidate_ids.shape[0] for b in batches]
    assert sizes == {6: [4, 2], 10: [4, 4, 2]}[game.blocks_per_epoch]
    for batch in batches:
        check_rules(game, batch)
        # senders that are the candidates share one tensor, so images are read once
        assert (batch.sender_images is batch.candidates) == (name != "oo-different")
    seen = torch.cat([b.candidate_ids.flatten() for b in batches])
    assert seen.unique().numel() == len(seen) == 60  # every image a candidate (and target) once


def test_oo_epoch_uses_per_class_queues_with_fewer_candidates_than_classes():
    dataset = ToyImages(n=48, n_classes=6)  # 8 images per class
    game = make("oo-same", dataset=dataset, n_distractors=2)
    seen = torch.cat([b.candidate_ids.flatten() for b in game.epoch(5)])
    assert len(seen) == 48 // 3 * 3
    for c in range(6):  # a class drawn k times uses k distinct images until its queue runs out
        of_class = seen[game.labels[seen] == c]
        assert of_class.unique().numel() == min(len(of_class), 8)


def test_defaults_match_the_paper():
    dataset = ToyImages(n=120, n_classes=10, size=4)
    assert SketchGame(dataset).n_candidates == 100  # 99 distractors
    assert SketchGame(dataset, "oo-same").n_candidates == 10  # one per class
    game = SketchGame(dataset, "oo-different")
    assert (game.n_candidates, game.n_classes, game.image_size, game.n_lines) == (
        10,
        10,
        (4, 4),
        20,
    )


@pytest.mark.parametrize("name", GAMES)
def test_sampling_is_deterministic_by_seed_and_generator(name):
    a, b, c = make(name, seed=3), make(name, seed=3), make(name, seed=4)
    first = [a.sample(2).candidate_ids for _ in range(3)]
    assert all(torch.equal(x, b.sample(2).candidate_ids) for x in first)
    assert not all(torch.equal(x, c.sample(2).candidate_ids) for x in first)
    # An explicit generator gives the same draws as a game seeded alike and leaves the
    # game's own generator untouched.
    state = a.generator.get_state()
    g = torch.Generator().manual_seed(3)
    from_g = a.sample(2, g).sender_ids
    assert torch.equal(from_g, make(name, seed=3).sample(2).sender_ids)
    assert torch.equal(a.generator.get_state(), state)
    epoch_a = [x.sender_ids for x in make(name, seed=5).epoch(2)]
    epoch_b = [x.sender_ids for x in make(name, seed=5).epoch(2)]
    assert all(torch.equal(x, y) for x, y in zip(epoch_a, epoch_b, strict=True))


def test_epoch_draws_eagerly_so_interleaving_is_deterministic():
    a, b = make("original"), make("original")
    epoch_a = a.epoch(1)
    sample_a = a.sample(1)
    epoch_b = b.epoch(1)
    assert torch.equal(next(iter(epoch_a)).candidate_ids, next(iter(epoch_b)).candidate_ids)
    assert torch.equal(sample_a.candidate_ids, b.sample(1).candidate_ids)


@pytest.mark.parametrize("name", GAMES)
def test_sample_game_is_one_game_of_a_block(name):
    game = make(name)
    targets = set()
    for _ in range(40):
        one = game.sample_game()
        assert one.targets.shape == (1, 1) and one.candidate_ids.shape == (1, game.n_candidates)
        target = int(one.targets)
        targets.add(target)
        target_id = one.candidate_ids[0, target]
        assert one.sender_labels.item() == game.labels[target_id]
        assert (one.sender_ids.item() == target_id) == (name != "oo-different")
        assert torch.equal(one.sender_images[0, 0], quantised(game.dataset, one.sender_ids)[0, 0])
    assert len(targets) > 3  # the target's position varies


def test_cache_and_lazy_reading_give_identical_games_and_labels_may_be_missing():
    cached = SketchGame(ToyImages(), "oo-different", seed=1)
    lazy = SketchGame(ToyImages(), "oo-different", seed=1, cache_bytes=0)
    unlabelled = SketchGame(ToyImages(with_labels=False), "oo-different", seed=1)
    x, y, z = cached.sample(4), lazy.sample(4), unlabelled.sample(4)
    assert torch.equal(x.candidates, y.candidates) and torch.equal(x.sender_images, y.sender_images)
    assert torch.equal(x.candidates, z.candidates) and torch.equal(
        x.candidate_labels, z.candidate_labels
    )


def test_cache_reads_each_image_once_and_preload_reads_all():
    dataset = ToyImages()
    game = SketchGame(dataset, "original", n_distractors=9)
    for _ in range(30):
        game.sample(2)
    assert dataset.reads <= 1 + 60
    preloaded_data = ToyImages()
    SketchGame(preloaded_data, "original", n_distractors=9, preload=True)
    assert preloaded_data.reads == 61
    too_big = ToyImages()
    game = SketchGame(too_big, "original", n_distractors=9, cache_bytes=1000)
    assert game.preload() is False and too_big.reads == 1
    game.sample(1)
    game.sample(1)
    assert too_big.reads == 21  # no cache: every game reads its images again


def test_pil_and_grey_images_are_accepted():
    class Pictures(ToyImages):
        def __getitem__(self, i):
            image, label = super().__getitem__(i)
            if i % 2:
                return image[0], label  # [H, W] grey
            pixels = (image * 255).round().byte().permute(1, 2, 0).numpy()
            return Image.fromarray(pixels), label

    batch = SketchGame(Pictures(), "oo-same").sample(2)
    ids = batch.candidate_ids.flatten()
    for image, i in zip(batch.candidates.flatten(0, 1), ids, strict=True):
        expected = quantised(ToyImages(), ids[ids == i][:1])[0]
        assert torch.equal(image, expected if i % 2 == 0 else expected[:1].expand(3, -1, -1))


def test_render_is_differentiable_and_uses_the_game_settings():
    game = make("original", n_lines=3, sigma2=1e-3, kernel="sigmoid", composite="max", invert=False)
    strokes = (torch.rand(2, 5, 3, 4) * 2 - 1).requires_grad_()
    sketch = game.render(strokes)
    assert sketch.shape == (2, 5, 3, 8, 8)
    expected = render_strokes(
        strokes, 8, sigma2=1e-3, kernel="sigmoid", composite="max", invert=False
    )
    assert torch.allclose(sketch, expected[..., None, :, :].expand_as(sketch))
    sketch.sum().backward()
    assert strokes.grad is not None and strokes.grad.abs().sum() > 0


def test_render_rejects_bad_strokes():
    game = make("original", n_lines=3)
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, 4\]"):
        game.render(torch.zeros(2, 4, 4))
    with pytest.raises(TypeError, match="floating-point"):
        game.render(torch.zeros(3, 4, dtype=torch.long))


def test_choose_and_score():
    game = make("oo-same", dataset=ToyImages(n=12, n_classes=3))
    batch = game.sample(2)
    scores = torch.full((2, 3, 3), -1.0)
    scores[0, :, :] = torch.eye(3)  # block 0: every game picks its target
    scores[1, :, 0] = 1.0  # block 1: every game picks candidate 0
    choices = game.choose(scores)
    assert choices.tolist() == [[0, 1, 2], [0, 0, 0]]
    result = game.score(choices, batch)
    assert result == pytest.approx({"comm_rate": 4 / 6, "class_rate": 4 / 6})
    with pytest.raises(ValueError, match="one per candidate"):
        game.choose(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="shape"):
        game.score(choices[:, :2], batch)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        game.score(choices + 1, batch)
    with pytest.raises(TypeError, match="integer"):
        game.score(choices.float(), batch)


def test_class_rate_counts_picks_of_the_targets_class():
    labels = [0, 0, 1, 1, 2, 2]  # pairs of images per class
    game = make("original", dataset=ToyImages(labels=labels, n_classes=3), n_distractors=5)
    batch = game.sample(1)
    ids = batch.candidate_ids[0]
    same_class_other = [
        int(((game.labels[ids] == game.labels[ids[j]]) & (ids != ids[j])).nonzero())
        for j in range(6)
    ]
    result = game.score(torch.tensor([same_class_other]), batch)
    assert result == {"comm_rate": 0.0, "class_rate": 1.0}


def test_game_batch_to_keeps_shared_tensors_shared_and_select_games():
    batch = make("original").sample(2)
    assert batch.sender_images is batch.candidates
    moved = batch.to("cpu", non_blocking=True)
    assert moved.sender_images is moved.candidates
    if torch.cuda.is_available():
        on_gpu = batch.pin_memory().to("cuda", non_blocking=True)
        assert on_gpu.candidates.is_cuda and on_gpu.sender_images is on_gpu.candidates
    picked = batch.select_games([2, 0])
    assert picked.targets.tolist() == [[2, 0], [2, 0]]
    assert torch.equal(picked.sender_images[:, 0], batch.sender_images[:, 2])
    assert torch.equal(picked.candidates, batch.candidates)


def test_pickled_game_continues_identically():
    game = make("oo-different")
    game.sample(1)
    copy = pickle.loads(pickle.dumps(game))
    assert torch.equal(copy.sample(3).sender_images, game.sample(3).sender_images)


def test_bad_configurations_give_clear_errors():
    with pytest.raises(ValueError, match="original, oo-same, oo-different"):
        SketchGame(ToyImages(), "oo")
    with pytest.raises(ValueError, match="dataset size"):
        SketchGame(ToyImages(n=50))  # 99 distractors need 100 images
    with pytest.raises(ValueError, match="6 classes"):
        SketchGame(ToyImages(), "oo-same", n_distractors=6)
    with pytest.raises(ValueError, match="positive integer"):
        SketchGame(ToyImages(), "original", n_distractors=0)
    lonely = ToyImages(labels=[0, 0, 1, 2, 2], n_classes=3)  # class1 has one image
    assert SketchGame(lonely, "oo-same").n_candidates == 3
    with pytest.raises(ValueError, match=r"at least 2 image.*class1"):
        SketchGame(lonely, "oo-different")
    with pytest.raises(ValueError, match=r"at least 1 image.*class3"):
        SketchGame(ToyImages(labels=[0, 1, 2], n_classes=4), "oo-same")
    with pytest.raises(TypeError, match="torch Dataset"):
        SketchGame("shapes")
    with pytest.raises(ValueError, match="kernel"):
        SketchGame(ToyImages(), "oo-same", kernel="gauss")
    with pytest.raises(ValueError, match="n_lines"):
        SketchGame(ToyImages(), "oo-same", n_lines=0)
    with pytest.raises(ValueError, match="labels must lie"):
        SketchGame(ToyImages(labels=[0, 1, 7], n_classes=3), "oo-same")
    with pytest.raises(TypeError, match=r"CPU torch\.Generator"):
        SketchGame(ToyImages(), "oo-same").sample(1, generator=3)


def test_bad_dataset_images_give_clear_errors():
    class Normalised(ToyImages):
        def __getitem__(self, i):
            image, label = super().__getitem__(i)
            return image * 4 - 2, label

    class Mixed(ToyImages):
        def __getitem__(self, i):
            image, label = super().__getitem__(i)
            return (image if i == 0 else image[:, :4]), label

    with pytest.raises(ValueError, match="Normalize"):
        SketchGame(Normalised(), "oo-same")
    with pytest.raises(ValueError, match="one size"):
        SketchGame(Mixed(), "oo-same", preload=True)
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        SketchGame([(torch.zeros(4, 8, 8), 0)], "original")


def test_datasets_with_a_batch_path_are_read_through_it():
    class Batched(ToyImages):
        batch_calls = 0

        def images(self, indices):
            self.batch_calls += 1
            return torch.stack([ToyImages.__getitem__(self, int(i))[0] for i in indices])

    batched = Batched()
    a = SketchGame(batched, "oo-different", seed=2).sample(3)
    b = SketchGame(ToyImages(), "oo-different", seed=2).sample(3)
    assert batched.batch_calls == 2  # candidates, then the other images of their classes
    assert torch.equal(a.candidates, b.candidates) and torch.equal(a.sender_images, b.sender_images)


@pytest.mark.parametrize("name", GAMES)
def test_every_candidate_slot_is_the_target_equally_often(name):
    """The env's games (``sample_game``) put the target in every slot with the same
    probability: 2,000 games with 10 (original) or 5 candidates, each slot's count within
    4.5 binomial standard deviations of its expectation (a uniform sampler fails this
    with probability below 1e-4; a sampler that never uses one slot fails it always)."""
    game = make(name, dataset=ToyImages(n=60, n_classes=5))
    generator = torch.Generator().manual_seed(0)
    n, c = 2000, game.n_candidates
    targets = torch.cat([game.sample_game_ids(generator)[2].flatten() for _ in range(n)])
    counts = torch.bincount(targets, minlength=c).double()
    assert within_sd(counts, n, 1 / c), counts.tolist()
    # and in the blocks of training, every slot is the target of exactly one game
    _, _, block_targets = game.sample_ids(4, generator)
    assert torch.equal(block_targets, torch.arange(c).repeat(4, 1))


# ----- found by mutation testing: sampling within classes, defaults, exact messages -----


@pytest.mark.parametrize("name", ["oo-same", "oo-different"])
def test_oo_games_draw_every_image_of_a_class_equally_often(name):
    """Each candidate is a uniform draw from its class, and (oo-different) each sender a
    uniform draw from the other images of the target's class: 600 blocks of 4 classes of
    5 images, every image's count within 4.5 binomial standard deviations."""
    game = make(name, dataset=ToyImages(n=20, n_classes=4))
    sender_ids, candidate_ids, _ = game.sample_ids(600, torch.Generator().manual_seed(0))
    counts = torch.bincount(candidate_ids.flatten(), minlength=20).double()
    assert within_sd(counts, 600, 1 / 5), counts.tolist()
    if name == "oo-different":
        for member in range(5):  # the sender given each candidate: any of the 4 others
            pairs = candidate_ids.flatten() == member
            others = torch.bincount(sender_ids.flatten()[pairs], minlength=20).double()
            same_class = [i for i in range(20) if i % 4 == member % 4 and i != member]
            assert others[member] == 0 and others.sum() == others[same_class].sum()
            assert within_sd(others[same_class], int(pairs.sum()), 1 / 4), others.tolist()


@pytest.mark.parametrize(
    ("sizes", "n_distractors"),
    [((3, 4, 5, 6), 1), ((3, 4, 5, 6), 2), ((3, 4, 5, 6), 3), ((6, 1, 1, 1, 1, 1, 1, 1), 1)],
)
def test_oo_epoch_serves_each_class_from_a_queue(sizes, n_distractors):
    """Within an epoch a class's images are each used before any is used again (its
    counts differ by at most one), whatever the number of slots a class gets (one, none:
    the last case leaves some classes out of most epochs)."""
    labels = [c for c, size in enumerate(sizes) for _ in range(size)]
    game = make("oo-same", dataset=ToyImages(labels=labels, n_classes=len(sizes)),
                n_distractors=n_distractors)  # fmt: skip
    for seed in range(10):
        batches = list(game.epoch(2, torch.Generator().manual_seed(seed)))
        ids = torch.cat([b.candidate_ids for b in batches])
        assert ids.shape == (len(labels) // (n_distractors + 1), n_distractors + 1)
        for block in game.labels[ids]:
            assert block.unique().numel() == n_distractors + 1
        counts = torch.bincount(ids.flatten(), minlength=len(labels))
        for c in range(len(sizes)):
            of_class = counts[game.labels == c]
            assert of_class.max() - of_class.min() <= 1, (c, of_class.tolist())


def test_defaults_are_the_papers_sketch_and_seed_zero():
    dataset = ToyImages(n=120, n_classes=10, size=4)
    game = SketchGame(dataset)
    assert (game.sigma2, game.kernel, game.composite, game.invert) == (5e-4, "exp", "softor", True)
    same, other = SketchGame(dataset, seed=0), SketchGame(dataset, seed=1)
    first = game.sample(1).candidate_ids
    assert torch.equal(first, same.sample(1).candidate_ids)
    assert not torch.equal(first, other.sample(1).candidate_ids)
    assert game.pin_memory is torch.cuda.is_available()


def test_pin_memory_setting_pins_the_images(monkeypatch):
    pinned = []

    def fake_pin(tensor):  # the real one needs CUDA
        pinned.append(tensor.shape)
        return tensor.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    assert make("oo-same", pin_memory=False).pin_memory is False
    make("oo-same", pin_memory=False).sample(2)
    assert pinned == []
    game = make("oo-different", pin_memory=1)
    assert game.pin_memory is True
    game.sample(2)
    assert pinned == [(2, 6, 3, 8, 8)] * 2  # candidates, then the senders' images
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert make("oo-same").pin_memory is True
    pinned.clear()
    batch = make("original", pin_memory=False).sample(2)
    copy = batch.pin_memory()
    assert (
        copy.sender_images is copy.candidates and len(pinned) == 5
    )  # 7 fields; images and ids shared
    assert all(torch.equal(getattr(copy, f), getattr(batch, f)) for f in vars(batch))


def test_game_batch_to_moves_every_field_once_and_passes_non_blocking(monkeypatch):
    batch = make("original").sample(2)
    moved = batch.to("meta")
    assert all(getattr(moved, f).device.type == "meta" for f in vars(batch))
    assert moved.sender_images is moved.candidates
    assert [getattr(moved, f).shape for f in vars(batch)] == [
        getattr(batch, f).shape for f in vars(batch)
    ]
    calls = []
    to = torch.Tensor.to

    def recording_to(tensor, *args, **kwargs):
        calls.append(kwargs.get("non_blocking"))
        return to(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    batch.to("cpu")
    batch.to("cpu", non_blocking=True)
    assert calls == [False] * 5 + [True] * 5  # 7 fields; images and ids shared


def test_select_games_keeps_every_field_of_the_chosen_games():
    batch = make("oo-different").sample(2)
    picked = batch.select_games(torch.tensor([3, 1]))
    for field in ("sender_images", "targets", "sender_labels", "sender_ids"):
        assert torch.equal(getattr(picked, field), getattr(batch, field)[:, [3, 1]]), field
    for field in ("candidates", "candidate_labels", "candidate_ids"):
        assert getattr(picked, field) is getattr(batch, field), field
    none = batch.select_games([])
    assert none.targets.shape == (2, 0) and none.sender_images.shape == (2, 0, 3, 8, 8)


def test_memory_is_checked_before_any_image_is_read(monkeypatch):
    """A dataset that states its ``image_size`` is checked for the images a block needs
    (candidates and the sender's image, plus one) before any image is read."""
    import sketchenv.game

    class Stated(ToyImages):
        image_size = 8

    checked = []
    monkeypatch.setattr(sketchenv.game, "check_memory", lambda *args: checked.append(args))
    SketchGame(Stated(n=120, n_classes=10), "original")
    SketchGame(Stated(n=120, n_classes=10), "original", n_distractors=5)
    SketchGame(Stated(n=120, n_classes=10), "oo-same")
    SketchGame(Stated(n=120, n_classes=10), "oo-different", n_distractors=3)
    SketchGame(ToyImages(n=120, n_classes=10), "original")  # no stated size: no early check

    class StatedUnnamed(Dataset):  # a stated size, labels, and no class names
        image_size, labels = 8, (0, 1, 2, 0, 1, 2)

        def __len__(self):
            return 6

        def __getitem__(self, i):
            return torch.zeros(3, 8, 8), self.labels[i]

    SketchGame(StatedUnnamed(), "oo-same", n_distractors=2)
    with pytest.raises(ValueError, match="at least 2 classes"):
        SketchGame(Stated(n=4, n_classes=1), "oo-same")
    assert checked == [(8, 101), (8, 7), (8, 11), (8, 5), (8, 4), (8, 3)]

    def refuse(size, n_images):
        raise ValueError(f"no room for {n_images} images of {size} px")

    monkeypatch.setattr(sketchenv.game, "check_memory", refuse)
    big = Stated(n=120, n_classes=10)
    with pytest.raises(ValueError, match="no room for 101 images of 8 px"):
        SketchGame(big, "original")
    assert big.reads == 0


def test_datasets_without_classes_count_them_from_the_labels():
    class Unnamed(ToyImages):
        classes = None

    game = SketchGame(Unnamed(n=12, n_classes=3), "oo-same")
    assert (game.n_classes, game.n_candidates) == (3, 3)

    class NoAttribute(Dataset):
        labels = (0, 1, 2, 2)

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.zeros(3, 4, 4), self.labels[i]

    assert SketchGame(NoAttribute(), "oo-same").n_classes == 3
    with pytest.raises(ValueError) as err:
        SketchGame(NoAttribute(), "oo-different")
    assert str(err.value) == (
        "oo-different needs at least 2 image(s) in every class; 2 class(es) have fewer: "
        "0, 1. Use a dataset/split with them or the original game"
    )


def test_class_counts_at_their_limits():
    assert SketchGame(ToyImages(n=4, n_classes=1), "original", n_distractors=1).n_candidates == 2
    assert SketchGame(ToyImages(n=4, n_classes=2), "oo-different").n_candidates == 2
    assert SketchGame(ToyImages(n=8, n_classes=4), "oo-same", n_distractors=1).n_candidates == 2
    assert SketchGame(ToyImages(n=8, n_classes=4, size=2), "oo-same").image_size == (2, 2)
    assert make("oo-same", n_lines=1).render(torch.zeros(1, 4)).shape == (3, 8, 8)
    two = ToyImages(labels=[0, 1, 2], n_classes=3)
    with pytest.raises(ValueError) as err:
        SketchGame(two, "original", n_distractors=2, sigma2=float("inf"))
    assert str(err.value) == "sigma2 must be a positive number, got inf"
    with pytest.raises(ValueError, match=r"got 0\.0"):
        SketchGame(two, "original", n_distractors=2, sigma2=0.0)
    with pytest.raises(ValueError) as err:
        SketchGame(ToyImages(labels=[0, 1, 2], n_classes=2), "oo-same")
    assert str(err.value) == (
        "dataset labels must lie in [0, 2) (one per class in dataset.classes), found [0, 2]"
    )


def test_oo_games_name_at_most_ten_short_classes():
    def short_classes(n_short):  # classes 0 .. n_short-1 have one image, the rest two
        labels = [c for c in range(12) for _ in range(1 if c < n_short else 2)]
        with pytest.raises(ValueError) as err:
            SketchGame(ToyImages(labels=labels, n_classes=12), "oo-different")
        return str(err.value)

    ten = ", ".join(f"class{c}" for c in range(10))
    assert short_classes(10) == (
        f"oo-different needs at least 2 image(s) in every class; 10 class(es) have fewer: "
        f"{ten}. Use a dataset/split with them or the original game"
    )
    assert short_classes(11).endswith(f"{ten} and 1 more. Use a dataset/split with them or "
                                      "the original game")  # fmt: skip
    assert short_classes(12).endswith(f"12 class(es) have fewer: {ten} and 2 more. Use a "
                                      "dataset/split with them or the original game")  # fmt: skip
    assert short_classes(1).endswith("1 class(es) have fewer: class0. Use a dataset/split "
                                     "with them or the original game")  # fmt: skip


def test_construction_messages_are_exact():
    def message(error, *args, **kwargs):
        with pytest.raises(error) as caught:
            SketchGame(*args, **kwargs)
        return str(caught.value)

    toy = ToyImages()
    assert message(ValueError, toy, kernel="gauss") == (
        "unknown kernel 'gauss'; choose one of exp, sigmoid"
    )
    assert message(ValueError, toy, composite="sum") == (
        "unknown composite 'sum'; choose one of softor, over, max"
    )
    assert message(TypeError, toy, seed=1.5) == "seed must be an integer, got 1.5"

    class OnlyGetitem:
        def __getitem__(self, i):
            return torch.zeros(3, 4, 4), 0

    assert message(TypeError, OnlyGetitem()) == (
        "dataset must be a torch Dataset of (image, label), got OnlyGetitem; "
        "build one by name with sketchenv.datasets.make_dataset(...)"
    )
    flat = [(torch.rand(3, 1, 3), i % 2) for i in range(4)]
    assert message(ValueError, flat, "oo-same") == (
        "the dataset's images are 1x3 px, too small to draw on (at least 2x2): resize them "
        "(image_size=, --image-size)"
    )
    assert message(ValueError, ToyImages(n=4, n_classes=1), "oo-same") == (
        "oo-same needs at least 2 classes (one candidate per class); the dataset has 1: use "
        "the original game or a dataset with more classes"
    )


def test_sampling_and_scoring_messages_are_exact():
    game = make("oo-same")
    for bad in (0, 1.5):
        with pytest.raises(ValueError) as err:
            game.sample(bad)
        assert str(err.value) == f"n_blocks must be a positive integer, got {bad!r}"
        with pytest.raises(ValueError) as err:
            game.epoch(bad)
        assert str(err.value) == f"blocks_per_batch must be a positive integer, got {bad!r}"
    with pytest.raises(TypeError) as err:
        game.sample(1, generator=3)
    assert str(err.value) == (
        "generator must be a CPU torch.Generator (batches are sampled on the CPU)"
    )
    for strokes, described in [
        ([[0.0] * 4] * 20, "list"),
        (torch.zeros(20, 4, dtype=torch.long), "tensor of shape [20, 4] and dtype torch.int64"),
    ]:
        with pytest.raises(TypeError) as err:
            game.render(strokes)
        assert str(err.value) == f"strokes must be a floating-point tensor, got {described}"
    with pytest.raises(ValueError) as err:
        game.choose(torch.tensor(1.0))
    assert str(err.value) == (
        "scores must be a tensor [..., 6] (one per candidate), got tensor of shape [] and "
        "dtype torch.float32"
    )
    batch = game.sample(2)
    with pytest.raises(TypeError) as err:
        game.score(batch.targets.bool(), batch)
    assert str(err.value) == (
        "choices must be an integer tensor of candidate indices, got tensor of shape [2, 6] "
        "and dtype torch.bool"
    )


def test_choose_takes_the_last_dimension_and_score_any_integer_dtype():
    game = make("oo-same")  # 6 candidates
    scores = torch.rand(2, 3, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(game.choose(scores), scores.argmax(-1))
    assert game.choose(scores).shape == (2, 3)
    assert game.choose(torch.tensor([0.0, 0, 0, 0, 2, 0])).item() == 4  # one game, unbatched
    batch = game.sample(2)
    for dtype in (torch.int32, torch.uint8, torch.int64):
        assert game.score(batch.targets.to(dtype), batch) == {"comm_rate": 1.0,
                                                              "class_rate": 1.0}  # fmt: skip


def test_epoch_draws_from_the_generator_it_is_given():
    a, b = make("oo-different", seed=0), make("oo-different", seed=1)
    one = [x.sender_ids for x in a.epoch(3, torch.Generator().manual_seed(5))]
    other = [x.sender_ids for x in b.epoch(3, torch.Generator().manual_seed(5))]
    assert all(torch.equal(x, y) for x, y in zip(one, other, strict=True))


def test_repr_names_the_game():
    game = make("oo-same", dataset=ToyImages(n=12, n_classes=3))
    assert repr(game) == (
        f"SketchGame('oo-same', 2 distractors, 20 lines, 8x8 px, 3 classes, "
        f"dataset={game.dataset!r})"
    )
    flat = SketchGame([(torch.rand(3, 2, 5), i % 2) for i in range(4)], "oo-same")
    assert "2x5 px, 2 classes" in repr(flat)
