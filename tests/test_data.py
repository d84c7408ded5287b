"""Datasets (synthetic shapes, COCO JSON, Pascal VOC XML), transforms and collate."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from focalops.data import (
    CocoDetection,
    Compose,
    RandomHorizontalFlip,
    Resize,
    ShapesDataset,
    VOCDetection,
    collate,
)


def test_shapes_deterministic_and_valid():
    a = ShapesDataset(6, image_size=(96, 128), num_classes=6, seed=3)
    b = ShapesDataset(6, image_size=(96, 128), num_classes=6, seed=3)
    c = ShapesDataset(6, image_size=(96, 128), num_classes=6, seed=4)
    labels = set()
    for i in range(len(a)):
        img, t = a[i]
        img_b, t_b = b[i]
        assert img.shape == (3, 96, 128) and img.dtype == torch.float32
        assert 0 <= img.min() and img.max() <= 1
        torch.testing.assert_close(img, img_b)
        torch.testing.assert_close(t["boxes"], t_b["boxes"])
        boxes = t["boxes"]
        assert boxes.shape[0] >= 1 and boxes.shape == (t["labels"].shape[0], 4)
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes >= 0).all() and (boxes[:, 2] <= 128).all() and (boxes[:, 3] <= 96).all()
        labels.update(t["labels"].tolist())
    assert not torch.equal(a[0][0], c[0][0])
    assert labels <= set(range(6)) and len(labels) >= 3
    with pytest.raises(ValueError, match="num_classes must be in"):
        ShapesDataset(1, num_classes=7)
    with pytest.raises(IndexError):
        a[6]


def test_shapes_boxes_are_the_visible_extent():
    ds = ShapesDataset(20, image_size=64, num_classes=1, max_objects=1, seed=0)  # one rectangle
    for i in range(5):
        img, boxes, labels = ds.generate(i)
        x1, y1, x2, y2 = boxes[0].astype(int)
        # The rectangle's colour fills its box: the box edges lie on the shape, not beyond it.
        inside = img[y1:y2, x1:x2].astype(float)
        assert inside.std(axis=(0, 1)).max() < 40


def test_shapes_sizes_span_small_to_large():
    ds = ShapesDataset(40, image_size=200, num_classes=3, seed=1)
    sides = torch.cat([ds[i][1]["boxes"] for i in range(len(ds))])
    sides = (sides[:, 2:] - sides[:, :2]).max(1).values
    assert sides.min() < 40 and sides.max() > 100


def test_resize_and_flip_transform_boxes():
    image = torch.rand(3, 50, 100)
    target = {"boxes": torch.tensor([[10.0, 5.0, 30.0, 45.0]]), "labels": torch.tensor([1])}
    out, t = Resize(100, 150)(image, target)
    assert out.shape == (3, 75, 150)  # shorter side 100 would make the longer 200 > 150
    torch.testing.assert_close(t["boxes"], torch.tensor([[15.0, 7.5, 45.0, 67.5]]))
    assert torch.equal(target["boxes"], torch.tensor([[10.0, 5.0, 30.0, 45.0]]))  # input untouched
    out, t = RandomHorizontalFlip(1.0)(image, target)
    torch.testing.assert_close(out, image.flip(-1))
    torch.testing.assert_close(t["boxes"], torch.tensor([[70.0, 5.0, 90.0, 45.0]]))
    out, t = RandomHorizontalFlip(0.0)(image, target)
    assert out is image
    out, t = Compose([Resize(25), RandomHorizontalFlip(1.0)])(image, target)
    torch.testing.assert_close(t["boxes"], torch.tensor([[35.0, 2.5, 45.0, 22.5]]))
    with pytest.raises(ValueError, match="min_size"):
        Resize(100, 50)


def test_collate_keeps_lists():
    ds = ShapesDataset(3, image_size=(64, 80))
    images, targets = collate([ds[i] for i in range(3)])
    assert len(images) == 3 and len(targets) == 3 and images[0].shape == (3, 64, 80)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    images, targets = next(iter(loader))
    assert isinstance(images, list) and len(images) == 2 and "boxes" in targets[0]


def _write_image(path, h, w, colour):
    Image.fromarray(np.full((h, w, 3), colour, dtype=np.uint8)).save(path)


def test_coco_loader(tmp_path):
    _write_image(tmp_path / "a.png", 40, 60, 200)
    _write_image(tmp_path / "b.jpg", 30, 20, 10)
    data = {
        "images": [
            {"id": 7, "file_name": "a.png", "height": 40, "width": 60},
            {"id": 3, "file_name": "b.jpg", "height": 30, "width": 20},
        ],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 18, "bbox": [10, 5, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 1, "bbox": [0, 0, 30, 30], "iscrowd": 1},
            {"id": 4, "image_id": 7, "category_id": 1, "bbox": [1, 1, 0, 4], "iscrowd": 0},
        ],
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    ds = CocoDetection(str(tmp_path), str(ann))
    assert len(ds) == 2 and ds.categories == ["person", "dog"] and ds.label_to_category_id == [1, 18]
    img, t = ds[0]  # sorted by id: image 3 first, no annotations
    assert t["image_id"] == 3 and img.shape == (3, 30, 20) and t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)
    img, t = ds[1]
    assert img.shape == (3, 40, 60) and abs(img.max().item() - 200 / 255) < 1e-6
    torch.testing.assert_close(t["boxes"], torch.tensor([[10.0, 5, 30, 15], [0, 0, 5, 5]]))
    assert t["labels"].tolist() == [1, 0]
    _, t = CocoDetection(str(tmp_path), str(ann), transforms=Resize(20))[1]
    torch.testing.assert_close(t["boxes"], torch.tensor([[5.0, 2.5, 15, 7.5], [0, 0, 2.5, 2.5]]))
    data["annotations"].append({"id": 5, "image_id": 7, "category_id": 99, "bbox": [0, 0, 1, 1]})
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown category_id 99"):
        CocoDetection(str(tmp_path), str(ann))
    ann.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="no 'annotations'"):
        CocoDetection(str(tmp_path), str(ann))


_VOC_XML = """<annotation><filename>{name}.jpg</filename><size><width>50</width><height>40</height></size>
{objects}</annotation>"""
_VOC_OBJ = """<object><name>{cls}</name><difficult>{difficult}</difficult>
<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"""


def test_voc_loader(tmp_path):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    objs = {
        "000001": [("dog", 0, 11, 6, 30, 20), ("person", 1, 1, 1, 10, 10), ("person", 0, 2, 3, 40, 39)],
        "000002": [],
    }
    for name, objects in objs.items():
        _write_image(tmp_path / "JPEGImages" / f"{name}.jpg", 40, 50, 128)
        xml = "".join(_VOC_OBJ.format(cls=c, difficult=d, x1=a, y1=b, x2=e, y2=f) for c, d, a, b, e, f in objects)
        (tmp_path / "Annotations" / f"{name}.xml").write_text(_VOC_XML.format(name=name, objects=xml))
    (tmp_path / "ImageSets" / "Main" / "val.txt").write_text("000002\n")
    ds = VOCDetection(str(tmp_path))
    assert len(ds) == 2
    img, t = ds[0]
    assert img.shape == (3, 40, 50)
    torch.testing.assert_close(t["boxes"], torch.tensor([[10.0, 5, 30, 20], [1, 2, 40, 39]]))
    assert t["labels"].tolist() == [11, 14]  # dog, person in VOC_CLASSES
    _, t = VOCDetection(str(tmp_path), keep_difficult=True)[0]
    assert t["labels"].tolist() == [11, 14, 14]
    ds = VOCDetection(str(tmp_path), image_set="val")
    assert len(ds) == 1 and ds[0][1]["boxes"].shape == (0, 4)
    ds = VOCDetection(str(tmp_path), classes=["person", "dog"], keep_difficult=True)
    assert ds[0][1]["labels"].tolist() == [1, 0, 0]
    with pytest.raises(ValueError, match="unknown class 'dog'"):
        VOCDetection(str(tmp_path), classes=["person"])
    with pytest.raises(FileNotFoundError, match="no Annotations folder"):
        VOCDetection(str(tmp_path / "nowhere"))
