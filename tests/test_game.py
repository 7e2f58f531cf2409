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
    expected, sd = n / c, math.sqrt(n * (1 / c) * (1 - 1 / c))
    assert ((counts - expected).abs() < 4.5 * sd).all(), counts.tolist()
    # and in the blocks of training, every slot is the target of exactly one game
    _, _, block_targets = game.sample_ids(4, generator)
    assert torch.equal(block_targets, torch.arange(c).repeat(4, 1))
