"""Datasets (synthetic shapes, COCO JSON, Pascal VOC XML in both layouts), their up-front checks
(one-line DataError naming the file and object), DataSpec, transforms and collate."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from focalops.data import (
    VOC_CLASSES,
    CocoDetection,
    Compose,
    DataSpec,
    RandomHorizontalFlip,
    Resize,
    ShapesDataset,
    VOCDetection,
    collate,
)
from focalops.errors import ConfigError, DataError


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


def _one_line(exc_info, *names):
    """The error is one line and names every one of ``names`` (files, objects)."""
    message = str(exc_info.value)
    assert "\n" not in message, message
    for name in names:
        assert str(name) in message, (name, message)
    return message


# ---- COCO ------------------------------------------------------------------------------------
def _coco(tmp_path):
    _write_image(tmp_path / "a.png", 40, 60, 200)
    _write_image(tmp_path / "b.jpg", 30, 20, 10)
    return {
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
            {"id": 5, "image_id": 3, "category_id": 18, "bbox": [15, 20, 10, 20], "iscrowd": 0},
        ],
    }


def test_coco_loader(tmp_path):
    data = _coco(tmp_path)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    ds = CocoDetection(str(tmp_path), str(ann))
    assert len(ds) == 2 and ds.classes == ["person", "dog"] and ds.label_to_category_id == [1, 18]
    assert str(ann) in ds.describe()
    img, t = ds[0]  # sorted by id: image 3 first; its box is clipped to the 20 x 30 image
    assert t["image_id"] == 3 and img.shape == (3, 30, 20)
    torch.testing.assert_close(t["boxes"], torch.tensor([[15.0, 20, 20, 30]]))
    img, t = ds[1]
    assert img.shape == (3, 40, 60) and abs(img.max().item() - 200 / 255) < 1e-6
    torch.testing.assert_close(t["boxes"], torch.tensor([[10.0, 5, 30, 15], [0, 0, 5, 5]]))  # crowd, w=0 left out
    assert t["labels"].tolist() == [1, 0]
    _, t = CocoDetection(str(tmp_path), str(ann), transforms=Resize(20))[1]
    torch.testing.assert_close(t["boxes"], torch.tensor([[5.0, 2.5, 15, 7.5], [0, 0, 2.5, 2.5]]))
    # --classes fixes the label order by name (a validation file may list its categories otherwise).
    ds = CocoDetection(str(tmp_path), str(ann), classes=["dog", "person", "cat"])
    assert ds[1][1]["labels"].tolist() == [0, 1] and ds.label_to_category_id == [18, 1, None]


def _mutate(data, tmp_path, change):
    kind, value = change
    if kind == "ann":
        data["annotations"][0].update(value)
    elif kind == "image":
        data["images"][0].update(value)
    elif kind == "drop":
        del data[value]
    elif kind == "file":
        (tmp_path / "a.png").write_bytes(value)
    elif kind == "category":
        data["categories"].append(value)
    return data


@pytest.mark.parametrize(
    "change, match, names",
    [
        (("ann", {"bbox": [10, 5, 20]}),
         r"annotation 1: bbox must be 4 finite numbers \[x, y, w, h\], got \[10, 5, 20\]", ["{tmp}/ann.json"]),
        (("ann", {"bbox": [10, 5, float("nan"), 3]}), "bbox must be 4 finite numbers", ["{tmp}/ann.json"]),
        (("ann", {"bbox": "10 5 20 10"}), "bbox must be 4 finite numbers", ["{tmp}/ann.json"]),
        (("ann", {"bbox": [10, 5, -2, 3]}), "negative width or height", ["{tmp}/ann.json", "annotation 1"]),
        (("ann", {"bbox": [100, 5, 2, 3]}), "lies outside the 60 x 40 image",
         ["{tmp}/ann.json", "annotation 1 (image a.png)"]),
        (("ann", {"category_id": 99}), "unknown category_id 99", ["{tmp}/ann.json", "annotation 1"]),
        (("ann", {"image_id": 5}), "unknown image_id 5", ["{tmp}/ann.json", "annotation 1"]),
        (("image", {"width": 61}), "61 x 40 in the JSON but .* is 60 x 40", ["{tmp}/ann.json", "{tmp}/a.png"]),
        (("image", {"file_name": "missing.png"}), "image file not found", ["{tmp}/missing.png"]),
        (("image", {"id": "seven"}), r"images\[0\] needs an integer 'id'", ["{tmp}/ann.json"]),
        (("file", b"not an image at all"), "not a readable image", ["{tmp}/a.png"]),
        (("file", b""), "not a readable image", ["{tmp}/a.png"]),
        (("drop", "annotations"), "has no 'annotations' list", ["{tmp}/ann.json"]),
        (("category", {"id": 2, "name": "dog"}), "category name 'dog' appears twice", ["{tmp}/ann.json"]),
    ],
)  # fmt: skip
def test_coco_errors_name_the_file_and_entry(tmp_path, change, match, names):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(_mutate(_coco(tmp_path), tmp_path, change)))
    with pytest.raises(DataError, match=match) as exc:
        CocoDetection(str(tmp_path), str(ann))
    _one_line(exc, *[n.format(tmp=tmp_path) for n in names])


def test_coco_file_errors(tmp_path):
    ann = tmp_path / "ann.json"
    text = json.dumps(_coco(tmp_path))
    ann.write_text(text[: len(text) // 2])  # truncated
    with pytest.raises(DataError, match=r"not valid JSON \(.* at line 1 column \d+\)") as exc:
        CocoDetection(str(tmp_path), str(ann))
    _one_line(exc, ann)
    ann.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(DataError, match="not valid JSON"):
        CocoDetection(str(tmp_path), str(ann))
    ann.write_text("[1, 2]")
    with pytest.raises(DataError, match="expected a JSON object"):
        CocoDetection(str(tmp_path), str(ann))
    with pytest.raises(DataError, match="annotation file not found") as exc:
        CocoDetection(str(tmp_path), str(tmp_path / "nope.json"))
    _one_line(exc, tmp_path / "nope.json")
    data = _coco(tmp_path)
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match="category 'dog' is not one of the classes") as exc:
        CocoDetection(str(tmp_path), str(ann), classes=["person"])
    _one_line(exc, ann, "annotation 1")


# ---- Pascal VOC ------------------------------------------------------------------------------
_VOC_XML = """<annotation>{filename}<size><width>50</width><height>40</height></size>
{objects}</annotation>"""
_VOC_OBJ = """<object><name>{cls}</name><difficult>{difficult}</difficult>
<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"""


def _voc_xml(filename, objects):
    xml = "".join(_VOC_OBJ.format(cls=c, difficult=d, x1=a, y1=b, x2=e, y2=f) for c, d, a, b, e, f in objects)
    return _VOC_XML.format(filename=f"<filename>{filename}</filename>" if filename else "", objects=xml)


def test_voc_devkit_layout(tmp_path):
    devkit, tmp_path = tmp_path, tmp_path / "VOC2007"
    (tmp_path / "Annotations").mkdir(parents=True)
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    objs = {
        "000001": [("dog", 0, 11, 6, 30, 20), ("person", 1, 1, 1, 10, 10), ("person", 0, 2, 3, 40, 39)],
        "000002": [],
    }
    for name, objects in objs.items():
        _write_image(tmp_path / "JPEGImages" / f"{name}.jpg", 40, 50, 128)
        (tmp_path / "Annotations" / f"{name}.xml").write_text(_voc_xml(f"{name}.jpg", objects))
    (tmp_path / "ImageSets" / "Main" / "val.txt").write_text("000002\n")
    ds = VOCDetection(str(tmp_path))
    assert len(ds) == 2 and ds.classes == ["dog", "person"]  # discovered, sorted
    img, t = ds[0]
    assert img.shape == (3, 40, 50)
    torch.testing.assert_close(t["boxes"], torch.tensor([[10.0, 5, 30, 20], [1, 2, 40, 39]]))  # 1-based -> 0-based
    assert t["labels"].tolist() == [0, 1]
    assert VOCDetection(str(tmp_path), classes=VOC_CLASSES)[0][1]["labels"].tolist() == [11, 14]
    _, t = VOCDetection(str(tmp_path), keep_difficult=True)[0]
    assert t["labels"].tolist() == [0, 1, 1]
    ds = VOCDetection(str(tmp_path), image_set="val")
    assert len(ds) == 1 and ds[0][1]["boxes"].shape == (0, 4) and "split 'val'" in ds.describe()
    ds = VOCDetection(str(tmp_path), classes=["person", "dog"], keep_difficult=True)
    assert ds[0][1]["labels"].tolist() == [1, 0, 0]
    with pytest.raises(DataError, match=r"object 1 \('dog'\): class 'dog' is not one of the classes") as exc:
        VOCDetection(str(tmp_path), classes=["person"])
    _one_line(exc, tmp_path / "Annotations" / "000001.xml")
    with pytest.raises(DataError, match=r"split file not found \(splits here: val;") as exc:
        VOCDetection(str(tmp_path), image_set="trainval")
    _one_line(exc, tmp_path / "ImageSets" / "Main" / "trainval.txt")
    # A VOCdevkit folder holding year folders: the error says which to pass.
    with pytest.raises(DataError, match="it holds VOC2007: pass one of them"):
        VOCDetection(str(devkit))


def _flat(tmp_path, files):
    """A flat folder: {xml name: (filename, objects)} plus images {name: (h, w)}."""
    folder = tmp_path / "flat"
    folder.mkdir(exist_ok=True)
    for name, content in files.items():
        if name.endswith(".xml"):
            (folder / name).write_text(_voc_xml(*content) if isinstance(content, tuple) else content)
        else:
            _write_image(folder / name, *content, 90)
    return folder


def test_voc_flat_folder_finds_images_by_stem(tmp_path):
    folder = _flat(
        tmp_path,
        {
            # DeepForest-style: <filename> names a .tif that is not there; the image is the .png.
            "OSBS_029.xml": ("OSBS_029.tif", [("Tree", 0, 0, 4, 20, 30), ("Snag", 0, 30, 10, 45, 38)]),
            "OSBS_029.png": (40, 50),
            "no_filename.xml": ("", [("Tree", 0, 5, 5, 15, 15)]),
            "no_filename.jpeg": (30, 30),
            "named.xml": ("other_name.jpg", []),
            "other_name.jpg": (20, 20),
        },
    )
    ds = VOCDetection(str(folder), one_based=False)
    assert ds.classes == ["Snag", "Tree"] and len(ds) == 3
    assert [os.path.basename(p) for p in ds.image_paths] == ["OSBS_029.png", "other_name.jpg", "no_filename.jpeg"]
    _, t = ds[0]
    torch.testing.assert_close(t["boxes"], torch.tensor([[0.0, 4, 20, 30], [30, 10, 45, 38]]))  # as written
    assert t["labels"].tolist() == [1, 0]
    assert "flat folder" in ds.describe()
    # Boxes at 0 with the devkit's 1-based convention: a warning names the flag.
    with pytest.warns(UserWarning, match=r"1 box\(es\) have xmin or ymin 0.*--no-voc-one-based"):
        ds = VOCDetection(str(folder))
    torch.testing.assert_close(ds[0][1]["boxes"][1], torch.tensor([29.0, 9, 45, 38]))
    with pytest.raises(DataError, match="a flat folder of XML files has no image sets"):
        VOCDetection(str(folder), image_set="trainval")


@pytest.mark.parametrize(
    "xml, match",
    [
        ("<annotation><object><name>Tree</name></object></annotation>", r"object 1 \('Tree'\) has no <bndbox>"),
        ("<annotation><object><name>Tree</name><bndbox><xmin>1</xmin><ymin>2</ymin><ymax>9</ymax></bndbox>"
         "</object></annotation>", r"object 1 \('Tree'\): <bndbox> has no <xmax>"),
        ("<annotation><object><name>Tree</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>ten</xmax><ymax>9</ymax>"
         "</bndbox></object></annotation>", r"<xmax> is 'ten', not a number"),
        ("<annotation><object><bndbox/></object></annotation>", "object 1 has no <name>"),
        (_voc_xml("", [("Tree", 0, 5, 5, 15, 15), ("Tree", 0, 9, 5, 3, 15)]), r"object 2 \('Tree'\): box .* no area"),
        (_voc_xml("", [("Tree", 0, 5, 5, 15, 15), ("Tree", 0, 50, 5, 60, 15)]), "lies outside the 30 x 30 image"),
        (_voc_xml("", [("Tree", 2, 5, 5, 15, 15)]), "<difficult> is '2', expected 0 or 1"),
        ("<annotation><object>", "not valid XML"),
        ("<html></html>", r"not a Pascal VOC annotation \(root element <html>"),
    ],
)  # fmt: skip
def test_voc_errors_name_the_file_and_object(tmp_path, xml, match):
    folder = _flat(tmp_path, {"bad.xml": xml, "bad.png": (30, 30)})
    with pytest.raises(DataError, match=match) as exc:
        VOCDetection(str(folder))
    _one_line(exc, folder / "bad.xml")


def test_voc_image_errors(tmp_path):
    folder = _flat(tmp_path, {"a.xml": ("a.tif", [("Tree", 0, 1, 1, 5, 5)])})
    with pytest.raises(DataError, match=r"<filename> 'a.tif' is not in .*, and no image named a\.\* ") as exc:
        VOCDetection(str(folder))
    _one_line(exc, folder / "a.xml")
    _write_image(folder / "a.png", 10, 10, 0)
    _write_image(folder / "a.jpg", 10, 10, 0)
    with pytest.raises(DataError, match="several images have the stem 'a': a.jpg, a.png"):
        VOCDetection(str(folder))
    os.remove(folder / "a.jpg")
    (folder / "a.png").write_text("this is not a PNG")
    with pytest.raises(DataError, match="not a readable image") as exc:
        VOCDetection(str(folder))
    _one_line(exc, folder / "a.png")
    with pytest.raises(DataError, match="folder not found"):
        VOCDetection(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither a VOCdevkit folder .* nor a flat folder of .xml files"):
        VOCDetection(str(tmp_path / "empty"))


def test_undecodable_image_fails_at_load_naming_it(tmp_path):
    """A truncated file passes the header check; loading it raises a one-line DataError naming it,
    also from a DataLoader worker process."""
    folder = _flat(tmp_path, {"a.xml": ("a.jpg", [("Tree", 0, 1, 1, 5, 5)])})
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / "a.jpg")
    data = (folder / "a.jpg").read_bytes()
    (folder / "a.jpg").write_bytes(data[: len(data) // 2])
    ds = VOCDetection(str(folder))
    with pytest.raises(DataError, match="cannot decode the image") as exc:
        ds[0]
    message = _one_line(exc, folder / "a.jpg")
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1, collate_fn=collate)
    with pytest.raises(DataError) as exc:
        next(iter(loader))
    assert str(exc.value) == message


# ---- DataSpec --------------------------------------------------------------------------------
def test_data_spec_checks_and_round_trips(tmp_path):
    spec = DataSpec(dataset="voc", data_root="rel/folder", classes=["Tree"], voc_one_based=False)
    assert os.path.isabs(spec.data_root)
    assert DataSpec.from_dict({**spec.to_dict(), "added_later": 1}) == spec
    assert spec.val_is_train()
    assert not spec.replace(val_root=str(tmp_path)).val_is_train()
    assert not DataSpec().val_is_train()
    assert DataSpec(dataset="coco", data_root="a", ann_file="t.json").val_is_train()
    assert not DataSpec(dataset="coco", data_root="a", ann_file="t.json", val_ann_file="v.json").val_is_train()
    for kwargs, match in [
        ({"classes": ["a"]}, "--classes applies to --dataset coco or voc"),
        ({"data_root": "x"}, "--data-root applies to --dataset coco or voc"),
        ({"dataset": "voc"}, "--data-root is required for --dataset voc"),
        ({"dataset": "coco", "data_root": "x"}, "--ann-file is required"),
        ({"dataset": "coco", "data_root": "x", "ann_file": "a", "val_split": "test"}, "--train-split/--val-split"),
        ({"dataset": "voc", "data_root": "x", "classes": ["a", "a"]}, "names a class twice"),
        ({"dataset": "yolo"}, "--dataset must be one of shapes, coco, voc"),
        ({"num_classes": 7}, r"--num-classes must be in \[1, 6\]"),
        ({"image_size": 100, "max_size": 50}, "--image-size <= --max-size"),
        ({"flip": 2.0}, "--flip must be a probability"),
    ]:
        with pytest.raises(ConfigError, match=match):
            DataSpec(**kwargs)
    shapes = DataSpec(image_size=32, train_images=2, val_images=3)
    train, val = shapes.build("train"), shapes.build("val", classes=["rectangle", "ellipse", "triangle"])
    assert len(train) == 2 and len(val) == 3 and not torch.equal(train[0][0], val[0][0])
    with pytest.raises(ConfigError, match="differ from the model's"):
        shapes.build("val", classes=["rectangle"])
