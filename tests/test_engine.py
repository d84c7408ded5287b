"""focalops.engine as a library: train() with exact resume and a checkpoint on SIGINT, the batch
schedule, tiled detection (windows, mapping back, merging boxes cut by tile borders)."""

import json
import os
import signal

import pytest
import torch
from _tiny import one_thread  # noqa: F401  (fixture)
from torch import nn

from focalops.data import RandomHorizontalFlip, ShapesDataset
from focalops.engine import TrainConfig, TrainingInterrupted, detect, merge_tiles, tile_windows, train
from focalops.engine.training import _BatchSchedule
from focalops.errors import ConfigError
from focalops.models import RetinaNet

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed=0):
    torch.manual_seed(seed)
    return RetinaNet(3, "resnet18", fpn_channels=16, head_convs=1, anchor_sizes=(8, 16, 32, 64, 128))


class _SignalAt(torch.utils.data.Dataset):
    """The shapes set, sending SIGINT to this process on its ``at``-th item (as Ctrl-C would)."""

    def __init__(self, dataset, at):
        self.dataset, self.at, self.calls = dataset, at, 0
        self.classes = dataset.classes

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return self.dataset[index]


def _log(folder):
    return [json.loads(line) for line in open(os.path.join(folder, "train_log.jsonl"))]


def test_sigint_saves_and_resume_continues_exactly(tmp_path, capfd):
    # Random flips: the augmentation must replay exactly too.
    data = ShapesDataset(6, image_size=64, seed=0, transforms=RandomHorizontalFlip(0.5))
    settings = dict(iters=5, batch_size=2, lr=0.01, warmup_iters=2, device="cpu", workers=0, log_every=1,
                    progress=False, seed=3)  # fmt: skip
    straight = _model()
    metrics = train(straight, data, config=TrainConfig(out=str(tmp_path / "a"), **settings), log=None)
    assert metrics["iterations"] == 5 and set(metrics) >= {"loss", "classification", "bbox_regression"}

    stopped = _model()
    with pytest.raises(TrainingInterrupted) as exc:  # SIGINT while loading the 2nd batch: stops after it
        train(stopped, _SignalAt(data, at=3), config=TrainConfig(out=str(tmp_path / "b"), **settings), log=None)
    checkpoint = str(tmp_path / "b" / "last.pth")
    assert exc.value.iteration == 2 and exc.value.checkpoint == checkpoint
    assert "SIGINT: stopping after this iteration" in capfd.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    assert [r["iteration"] for r in _log(tmp_path / "b")] == [1, 2]

    resumed = _model(seed=1)  # other initial weights: the checkpoint's must replace them
    train(resumed, data, config=TrainConfig(out=str(tmp_path / "b"), resume=checkpoint, **settings), log=None)
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    assert _log(tmp_path / "b") == [{**r, "images_per_s": r2["images_per_s"]} for r, r2 in
                                    zip(_log(tmp_path / "a"), _log(tmp_path / "b"))]  # fmt: skip
    with pytest.raises(ConfigError, match="is at iteration 5, past the 3 iterations"):
        train(_model(), data, config=TrainConfig(**{**settings, "iters": 3}, resume=checkpoint), log=None)


def test_batch_schedule_is_a_function_of_seed_and_iteration():
    full = list(_BatchSchedule(10, 3, seed=5, rank=0, world=1).span(0, 7))
    assert len(full) == 7 and all(len(b) == 3 for b in full)  # 3 batches per epoch, the tail dropped
    epoch0 = [i for b in full[:3] for i, _ in b]
    assert len(set(epoch0)) == 9
    assert list(_BatchSchedule(10, 3, seed=5, rank=0, world=1).span(4, 7)) == full[4:]
    assert [i for i, _ in full[3]] != [i for i, _ in full[0]]  # a new permutation each epoch
    ranks = [list(_BatchSchedule(10, 2, seed=5, rank=r, world=2).span(0, 2)) for r in (0, 1)]
    seen = [i for batches in ranks for b in batches for i, _ in b]
    assert len(seen) == 8 == len(set(seen))  # the two processes see different images
    assert _BatchSchedule(3, 2, seed=0, rank=0, world=2).per_epoch == 0


def test_train_rejects_bad_settings(tmp_path):
    data = ShapesDataset(4, image_size=64)
    with pytest.raises(ConfigError, match="--batch-size 8 x 1 process\\(es\\) is more than the 4 training images"):
        train(_model(), data, config=TrainConfig(device="cpu"), log=None)
    with pytest.raises(ConfigError, match="the model has 3 classes, the training set 1"):
        train(_model(), ShapesDataset(4, num_classes=1), config=TrainConfig(device="cpu"), log=None)
    for kwargs, match in [
        ({"batch_size": 0}, "--batch-size must be >= 1"),
        ({"optimizer": "lion"}, "--optimizer must be sgd or adamw"),
        ({"lr": float("nan")}, "--lr must be a positive number"),
        ({"lr_steps": (0.5, 2.0)}, "--lr-steps must be fractions"),
        ({"log_every": 0}, "--log-every must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=match):
            TrainConfig(**kwargs)
    with pytest.raises(ConfigError, match="--amp on CPU supports --amp-dtype bf16 only"):
        train(_model(), data, config=TrainConfig(batch_size=2, device="cpu", amp="fp16"), log=None)
    with pytest.raises(ConfigError, match="--device must be cpu, cuda"):
        train(_model(), data, config=TrainConfig(batch_size=2, device="tpu"), log=None)


# ---- tiles -----------------------------------------------------------------------------------
def test_tile_windows_cover_the_image_with_overlap():
    windows = tile_windows(260, 300, 128, 0.25)
    xs = sorted({w[0] for w in windows})
    assert xs == [0, 96, 172] and sorted({w[1] for w in windows}) == [0, 96, 132]
    assert all(x2 - x1 == 128 and y2 - y1 == 128 for x1, y1, x2, y2 in windows)
    covered = torch.zeros(260, 300, dtype=torch.bool)
    for x1, y1, x2, y2 in windows:
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    assert tile_windows(100, 60, 128, 0.25) == [(0, 0, 60, 100)]  # smaller than one tile
    assert len(tile_windows(128, 256, 128, 0.0)) == 2
    with pytest.raises(ConfigError, match="--tile must be at least 32"):
        tile_windows(100, 100, 16, 0.25)
    with pytest.raises(ConfigError, match=r"--tile-overlap must be a fraction in \[0, 1\)"):
        tile_windows(100, 100, 64, 1.0)


def test_merge_keeps_the_whole_box_over_its_cut_part():
    boxes = torch.tensor([
        [10.0, 10, 50, 50],   # 0: whole, tile 0
        [40.0, 10, 50, 50],   # 1: the same object cut by tile 1's left border (IoU 0.25): dropped
        [10.0, 10, 50, 50],   # 2: the whole object again in tile 2: NMS duplicate, lower score
        [44.0, 12, 50, 48],   # 3: same place, other class: kept
        [200.0, 10, 230, 40],  # 4: cut, but no tile saw it whole: kept
        [60.0, 60, 80, 80],   # 5: another object: kept
    ])  # fmt: skip
    scores = torch.tensor([0.6, 0.9, 0.5, 0.7, 0.4, 0.8])
    labels = torch.tensor([0, 0, 0, 1, 0, 0])
    tiles = torch.tensor([0, 1, 2, 1, 1, 0])
    cut = torch.tensor([False, True, False, True, True, False])
    keep = merge_tiles(boxes, scores, labels, tiles, cut)
    assert keep.tolist() == [5, 0, 3, 4]  # whole boxes first (by score), then cut ones
    # Cut boxes of the same tile never suppress each other by coverage (the model's NMS judged them).
    keep = merge_tiles(boxes[[0, 1]], scores[:2], labels[:2], torch.tensor([1, 1]), cut[:2])
    assert sorted(keep.tolist()) == [0, 1]
    assert merge_tiles(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64),
                       torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.bool)).numel() == 0  # fmt: skip


class _RedSquares(nn.Module):
    """A detector for the test image: one box (score 0.9, class 0) per red square, found from the
    row and column runs of red pixels (squares are laid out so those runs separate them)."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives detect() the device
        self.config = {"nms_thresh": 0.5}

    @staticmethod
    def _runs(present):
        edges = torch.diff(torch.cat([torch.zeros(1), present.float(), torch.zeros(1)])).nonzero().flatten()
        return edges.view(-1, 2).tolist()

    def forward(self, images):
        outputs = []
        for image in images:
            red = (image[0] > 0.5) & (image[1] < 0.3)
            boxes = [
                [x1, y1, x2, y2]
                for x1, x2 in self._runs(red.any(0))
                for y1, y2 in self._runs(red.any(1))
                if red[y1:y2, x1:x2].any()
            ]
            n = len(boxes)
            outputs.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
                            "scores": torch.full((n,), 0.9), "labels": torch.zeros(n, dtype=torch.int64)})  # fmt: skip
        return outputs


def test_detect_by_tiles_maps_boxes_back_and_merges_them():
    # Tiles of 128 at overlap 0.25 start at x 0, 96, 172 and y 0, 96, 132 on this 300 x 260 image.
    squares = [(5, 5), (90, 30), (118, 140), (180, 100), (250, 200)]  # x 118-138 crosses x=128
    image = torch.zeros(3, 260, 300)
    for x, y in squares:
        image[0, y : y + 20, x : x + 20] = 1.0
    truth = sorted([float(x), float(y), x + 20.0, y + 20.0] for x, y in squares)
    found = detect(_RedSquares(), image, tile=128, overlap=0.25)
    assert sorted(found["boxes"].tolist()) == truth and found["best_score"] == pytest.approx(0.9)
    # Each tile resized as the training images (here to 64 px): boxes come back to image pixels.
    found = detect(_RedSquares(), image, tile=128, overlap=0.25, image_size=64)
    assert len(found["boxes"]) == len(truth)
    torch.testing.assert_close(torch.tensor(sorted(found["boxes"].tolist())), torch.tensor(truth), atol=2.0, rtol=0)
    # Untiled: the whole image resized once.
    found = detect(_RedSquares(), image, image_size=130)
    torch.testing.assert_close(torch.tensor(sorted(found["boxes"].tolist())), torch.tensor(truth), atol=2.5, rtol=0)
    # A threshold above every score keeps nothing but still reports the best score.
    found = detect(_RedSquares(), image, tile=128, score_thresh=0.95)
    assert found["boxes"].shape == (0, 4) and found["best_score"] == pytest.approx(0.9)
