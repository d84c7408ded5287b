"""The focalops CLI: --help, train -> eval -> predict end to end, resume from the checkpoint alone,
one-line errors with exit status 2 (usage) or 1 (bad data or checkpoint), Ctrl-C, tiled and folder
prediction, a flat VOC folder with custom classes, bench delegation, DDP."""

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch
from _tiny import TINY, one_thread  # noqa: F401  (fixture)
from PIL import Image

from focalops import cli
from focalops.data import ShapesDataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("one_thread")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(capsys, *argv):
    """``(exit status, stdout, stderr)`` of the CLI run in this process."""
    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def _one_line_error(err, *names):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and " error: " in lines[0] and "Traceback" not in err, err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny shapes run (3 iterations): its folder, for the eval / predict / hostile-input tests."""
    out = tmp_path_factory.mktemp("run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    assert cli.main(["train", *TINY, "--iters", "3", "--out", str(out), "--checkpoint-every", "2"]) == 0
    torch.set_num_threads(threads)
    return out


def test_help_documents_every_flag(capsys):
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == {"train", "eval", "predict", "export", "bench"}
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    for name in ("train", "eval", "predict"):
        with pytest.raises(SystemExit) as exc:
            cli.main([name, "--help"])
        assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--amp", "--resume", "--classes", "--val-root", "--no-voc-one-based", "--tile", "--tile-overlap",
                 "--json", "--csv", "--debug"):  # fmt: skip
        assert flag in out, flag
    result = subprocess.run([sys.executable, "-m", "focalops", "--help"], capture_output=True, text=True, env=_env())
    assert result.returncode == 0 and "torchrun" in result.stdout and "Exit status" in result.stdout


def test_train_eval_predict_resume_end_to_end(run, tmp_path, capsys):
    pytest.importorskip("pycocotools")  # COCO mAP; absent on some GPU machines
    shutil.copytree(run, tmp_path / "run")
    out = tmp_path / "run"
    ckpt = torch.load(out / "last.pth", weights_only=True)  # tensors and plain values only
    assert ckpt["iteration"] == 3 and ckpt["classes"] == ["rectangle", "ellipse", "triangle"]
    assert ckpt["config"]["anchor_sizes"] == (8, 16, 32, 64, 128) and ckpt["data"]["image_size"] == 64
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3]

    # --resume alone continues the run: every other setting comes from the checkpoint.
    status, stdout, _ = _run(capsys, "train", "--resume", out / "last.pth", "--iters", "5", "--eval", "--no-progress")
    assert status == 0 and "resumed at iteration 3" in stdout and "resnet18" in stdout
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3, 4, 5]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"AP", "AP50", "AP75"} and all(0 <= v <= 1 for v in metrics.values())

    # eval restores the data from the checkpoint and says what it scored.
    status, stdout, _ = _run(capsys, "eval", out / "last.pth", "--no-progress", "--device", "cpu")
    assert status == 0 and "focalops eval: 4 images from the synthetic shapes set (64 x 64 px, seed 1000003)" in stdout
    assert "AP50" in stdout
    status, stdout, _ = _run(capsys, "eval", out / "last.pth", "--val-images", "2", "--no-progress", "--device", "cpu")
    assert status == 0 and "2 images from" in stdout

    png = tmp_path / "pred.png"
    status, stdout, _ = _run(capsys, "predict", out / "last.pth", "-o", png, "--score-thresh", "0", "--device", "cpu")
    assert status == 0 and "validation image 0 of shapes" in stdout
    with Image.open(png) as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    # A user image of another size: resized for the model, boxes drawn at the image's scale.
    src = tmp_path / "in.jpg"
    Image.new("RGB", (200, 100), (90, 120, 30)).save(src)
    status, stdout, _ = _run(capsys, "predict", out / "last.pth", "--image", src, "-o", png, "--score-thresh", "0",
                             "--json", tmp_path / "d.json", "--device", "cpu")  # fmt: skip
    assert status == 0
    with Image.open(png) as im:
        assert im.size == (200, 100)
    rows = json.loads((tmp_path / "d.json").read_text())
    assert rows and all(0 <= r["xmin"] <= r["xmax"] <= 200 and 0 <= r["ymin"] <= r["ymax"] <= 100 for r in rows)
    # Nothing above the threshold: it says so, with the best score seen.
    status, stdout, _ = _run(capsys, "predict", out / "last.pth", "--image", src, "-o", png, "--score-thresh", "0.99",
                             "--device", "cpu")  # fmt: skip
    best = max(r["score"] for r in rows)
    assert status == 0 and f"no detection scored >= 0.99 (the best score was {best:.3f}" in stdout


def test_ctrl_c_saves_a_checkpoint(tmp_path):
    """A real Ctrl-C (SIGINT to the process group, data loader worker included)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "focalops", "train", *TINY, "--workers", "1", "--iters", "1000", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 180
        while not (out / "train_log.jsonl").exists() or not (out / "train_log.jsonl").read_text():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    iteration = torch.load(out / "last.pth", weights_only=True)["iteration"]
    assert 1 <= iteration < 1000 and "Traceback" not in err
    assert f"stopped at iteration {iteration}; saved {out / 'last.pth'} (continue with: focalops train --resume" in err
    assert sorted(os.listdir(out)) == ["last.pth", "train_log.jsonl"]  # no temporary left


@pytest.mark.parametrize(
    "argv, match",
    [
        (["train", "--bogus"], "unrecognized arguments: --bogus"),
        (["train", "--anchor-sizes", "16,32,64,128"], "--anchor-sizes: expected five positive numbers"),
        (["train", "--anchor-sizes", "a,b,c,d,e"], "--anchor-sizes: expected five positive numbers"),
        (["train", "--classes", "a,,b"], "--classes: expected distinct non-empty names"),
        (["train", *TINY, "--classes", "Tree"], "--classes applies to --dataset coco or voc"),
        (["train", *TINY, "--dataset", "voc"], "--data-root is required for --dataset voc"),
        (["train", *TINY, "--dataset", "yolo"], "--dataset must be one of shapes, coco, voc"),
        (["train", *TINY, "--batch-size", "0"], "--batch-size must be >= 1"),
        (["train", *TINY, "--batch-size", "9"], "--batch-size 9 x 1 process(es) is more than the 8 training images"),
        (["train", *TINY, "--device", "tpu"], "--device must be cpu, cuda, cuda:N or auto"),
        (["train", *TINY, "--amp", "--amp-dtype", "fp16"], "--amp on CPU supports --amp-dtype bf16 only"),
        (["eval"], "the following arguments are required: checkpoint"),
    ],
)
def test_usage_errors_are_one_line_with_status_2(argv, match, capsys, tmp_path):
    status, _, err = _run(capsys, *argv, *(["--out", tmp_path] if argv[0] == "train" and len(argv) > 2 else []))
    assert status == 2, err
    assert match in _one_line_error(err)
    assert not (tmp_path / "last.pth").exists()


def test_predict_usage_errors(run, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    for argv, match in [
        (["--tile", "8"], "--tile must be at least 32"),
        (["--tile", "64", "--tile-overlap", "1.5"], "--tile-overlap must be a fraction"),
        (["--image", tmp_path / "empty"], "the folder holds no image"),
        (["--val-index", "4"], "--val-index must be in [0, 4), got 4"),
    ]:
        status, _, err = _run(capsys, "predict", run / "last.pth", *argv, "-o", tmp_path / "p.png", "--device", "cpu")
        assert status == 2 and match in _one_line_error(err), err


def _damage(src, dst, kind):
    data = src.read_bytes()
    if kind == "flipped":  # 4 KB of flipped bytes inside the largest tensor (torch's reader checks no CRC)
        with zipfile.ZipFile(src) as archive:
            record = max(archive.infolist(), key=lambda info: info.file_size)
        name_length, extra_length = struct.unpack("<HH", data[record.header_offset + 26 : record.header_offset + 30])
        start = record.header_offset + 30 + name_length + extra_length + record.file_size // 2
        data = data[:start] + bytes(b ^ 0xFF for b in data[start : start + 4096]) + data[start + 4096 :]
    elif kind == "truncated":
        data = data[: len(data) // 3]
    elif kind == "empty":
        data = b""
    elif kind == "text":
        data = b"epoch 3, loss 0.52\n" * 50
    if kind == "wrong-key":
        torch.save({"state_dict": torch.load(src, weights_only=True)["model"]}, dst)
    elif kind != "missing":
        dst.write_bytes(data)


@pytest.mark.parametrize("command", ["eval", "predict"])
@pytest.mark.parametrize(
    "kind, match",
    [
        ("flipped", "corrupted: content digest mismatch"),
        ("truncated", "not a readable checkpoint"),
        ("empty", "empty file"),
        ("text", "not a readable checkpoint"),
        ("wrong-key", "not a focalops checkpoint"),
        ("missing", "checkpoint not found"),
    ],
)
def test_bad_checkpoints_are_refused_in_one_line(run, tmp_path, capsys, command, kind, match):
    bad = tmp_path / f"{kind}.pth"
    _damage(run / "last.pth", bad, kind)
    extra = ["-o", tmp_path / "p.png"] if command == "predict" else ["--workers", "0"]
    status, _, err = _run(capsys, command, bad, "--device", "cpu", "--no-progress", *extra)
    assert status == 1
    assert match in _one_line_error(err, bad)


def _shapes_images(folder, count, seed, size=64, num_classes=2):
    """Writes ``count`` shapes images as PNG; returns [(file name, boxes, labels)]."""
    folder.mkdir(parents=True, exist_ok=True)
    data = ShapesDataset(count, image_size=size, num_classes=num_classes, max_objects=3, min_size=0.25, seed=seed)
    written = []
    for i in range(count):
        image, boxes, labels = data.generate(i)
        name = f"img_{seed}_{i:03d}.png"
        Image.fromarray(image).save(folder / name)
        written.append((name, boxes, labels))
    return written


def _voc_folder(folder, count, seed, names=("Snag", "Tree"), filename=lambda name: name):
    """A flat VOC folder (LabelImg / DeepForest style: XML beside the image, 0-based boxes)."""
    for name, boxes, labels in _shapes_images(folder, count, seed):
        objects = "".join(
            f"<object><name>{names[label]}</name><difficult>0</difficult><bndbox><xmin>{int(b[0])}</xmin>"
            f"<ymin>{int(b[1])}</ymin><xmax>{int(b[2])}</xmax><ymax>{int(b[3])}</ymax></bndbox></object>"
            for b, label in zip(boxes, labels)
        )
        stem = name[:-4]
        (folder / f"{stem}.xml").write_text(f"<annotation><filename>{filename(name)}</filename>{objects}</annotation>")
    return folder


def _coco_folder(folder, count, seed):
    written = _shapes_images(folder, count, seed)
    data = {
        "images": [{"id": i + 1, "file_name": name, "width": 64, "height": 64}
                   for i, (name, _, _) in enumerate(written)],
        "categories": [{"id": 1, "name": "Snag"}, {"id": 2, "name": "Tree"}],
        "annotations": [
            {"id": len(written) * i + k + 1, "image_id": i + 1, "category_id": int(label) + 1,
             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])], "iscrowd": 0}
            for i, (_, boxes, labels) in enumerate(written) for k, (b, label) in enumerate(zip(boxes, labels))
        ],
    }  # fmt: skip
    (folder / "ann.json").write_text(json.dumps(data))
    return data


def _break_xml(folder, remove):
    xml = sorted(folder.glob("*.xml"))[1]
    text = xml.read_text()
    start = text.index(f"<{remove}>")
    end = text.index(f"</{remove}>") + len(remove) + 3
    xml.write_text(text[:start] + text[end:])
    return xml


@pytest.mark.parametrize("case", ["coco-box-3-numbers", "coco-truncated", "coco-not-an-image", "voc-no-bndbox",
                                  "voc-no-xmax", "voc-val-no-xmax"])  # fmt: skip
def test_bad_data_fails_in_one_line_before_training(tmp_path, capsys, case):
    out = tmp_path / "run"
    if case.startswith("coco"):
        data = _coco_folder(tmp_path / "coco", 4, seed=0)
        ann = tmp_path / "coco" / "ann.json"
        flags = ["--dataset", "coco", "--data-root", tmp_path / "coco", "--ann-file", ann]
        if case == "coco-box-3-numbers":
            data["annotations"][2]["bbox"] = data["annotations"][2]["bbox"][:3]
            ann.write_text(json.dumps(data))
            names, match = [ann, f"annotation {data['annotations'][2]['id']}"], "bbox must be 4 finite numbers"
        elif case == "coco-truncated":
            ann.write_text(ann.read_text()[:200])
            names, match = [ann], "not valid JSON"
        else:
            bad = tmp_path / "coco" / data["images"][1]["file_name"]
            bad.write_text("<html>not an image</html>")
            names, match = [bad], "not a readable image"
    else:
        train_dir = _voc_folder(tmp_path / "train", 4, seed=0)
        val_dir = _voc_folder(tmp_path / "val", 2, seed=1)
        flags = ["--dataset", "voc", "--data-root", train_dir, "--val-root", val_dir, "--eval", "--no-voc-one-based"]
        broken = _break_xml(val_dir if case == "voc-val-no-xmax" else train_dir,
                            "bndbox" if case == "voc-no-bndbox" else "xmax")  # fmt: skip
        names = [broken, "object 1"]
        match = "has no <bndbox>" if case == "voc-no-bndbox" else "<bndbox> has no <xmax>"
    status, _, err = _run(capsys, "train", *TINY, *flags, "--iters", "2", "--out", out)
    assert status == 1
    assert match in _one_line_error(err, *names)
    assert not out.exists()  # failed before the first iteration: no log, no checkpoint


def test_internal_errors_show_a_traceback_only_with_debug(run, capsys, monkeypatch):
    import focalops.engine

    def broken(*args, **kwargs):
        raise RuntimeError("something broke\nsecond line")

    monkeypatch.setattr(focalops.engine, "evaluate", broken)
    status, _, err = _run(capsys, "eval", run / "last.pth", "--device", "cpu")
    assert status == 1
    line = _one_line_error(err)
    assert "internal error: RuntimeError: something broke second line (run again with --debug" in line
    with pytest.raises(RuntimeError, match="something broke"):
        cli.main(["eval", str(run / "last.pth"), "--device", "cpu", "--debug"])
    # In a real process: exactly one line on stderr.
    missing = run / "missing.pth"
    result = subprocess.run([sys.executable, "-m", "focalops", "eval", str(missing)], capture_output=True, text=True,
                            env=_env())  # fmt: skip
    assert result.returncode == 1 and result.stderr == f"focalops eval: error: {missing}: checkpoint not found\n"


def test_a_closed_output_pipe_ends_quietly(run, tmp_path):
    """`focalops predict ... | head`: the reader is gone; no traceback, no 'internal error'."""
    cmd = [sys.executable, "-m", "focalops", "predict", str(run / "last.pth"), "-o", str(tmp_path / "p.png"),
           "--score-thresh", "0", "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command prints anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err


def test_a_missing_extra_is_named(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` now fails as if not installed
    status, _, err = _run(capsys, "train", *TINY, "--iters", "1", "--out", tmp_path)
    assert status == 1
    assert "needs the Python package 'tqdm': pip install 'focalops[cli]'" in _one_line_error(err)


def test_predict_a_folder_to_json_and_csv(run, tmp_path, capsys):
    folder = tmp_path / "images"
    _shapes_images(folder, 3, seed=5)
    (folder / "notes.txt").write_text("not an image: skipped")
    os.rename(folder / "img_5_002.png", folder / "img_5_001.jpg")  # two images with one stem
    status, stdout, _ = _run(capsys, "predict", run / "last.pth", "--image", folder, "-o", tmp_path / "drawn",
                             "--score-thresh", "0.0", "--json", tmp_path / "d.json", "--csv", tmp_path / "d.csv",
                             "--device", "cpu")  # fmt: skip
    assert status == 0 and stdout.count("focalops predict: ") == 5  # 3 images, 2 files
    assert sorted(os.listdir(tmp_path / "drawn")) == ["img_5_000.png", "img_5_001_jpg.png", "img_5_001_png.png"]
    rows = json.loads((tmp_path / "d.json").read_text())
    csv_lines = (tmp_path / "d.csv").read_text().splitlines()
    assert csv_lines[0] == "image_path,xmin,ymin,xmax,ymax,label,score" and len(csv_lines) == len(rows) + 1
    assert {os.path.basename(r["image_path"]) for r in rows} == {"img_5_000.png", "img_5_001.png", "img_5_001.jpg"}
    assert {r["label"] for r in rows} <= {"rectangle", "ellipse", "triangle"}


def test_flat_voc_folder_with_custom_classes_through_the_cli(tmp_path, capsys):
    """The issue's user: a flat folder of XML beside images (LabelImg / DeepForest), class names of
    their own, 0-based boxes, one XML naming a .tif that is really a .png; a separate validation
    folder; then eval with no data flags and tiled predict on a large image."""
    pytest.importorskip("pycocotools")
    train_dir = _voc_folder(tmp_path / "train", 6, seed=0,
                            filename=lambda name: name.replace("img_0_002.png", "img_0_002.tif"))  # fmt: skip
    val_dir = _voc_folder(tmp_path / "val", 2, seed=1)
    out = tmp_path / "run"
    status, stdout, err = _run(capsys, "train", *TINY, "--dataset", "voc", "--data-root", train_dir, "--val-root",
                               val_dir, "--no-voc-one-based", "--iters", "3", "--eval", "--out", out)  # fmt: skip
    assert status == 0, err
    assert f"Pascal VOC flat folder {train_dir} (6 images, 2 classes: Snag, Tree)" in stdout and "val mAP" in stdout
    ckpt = torch.load(out / "last.pth", weights_only=True)
    assert ckpt["classes"] == ["Snag", "Tree"] and ckpt["config"]["num_classes"] == 2

    status, stdout, _ = _run(capsys, "eval", out / "last.pth", "--workers", "0", "--no-progress", "--device", "cpu")
    assert status == 0 and f"focalops eval: 2 images from Pascal VOC flat folder {val_dir}\n" in stdout

    # A larger raster: six training images side by side (192 x 128 px), predicted by 64 px tiles.
    tiles = [np.asarray(Image.open(train_dir / f"img_0_{k:03d}.png")) for k in range(6)]
    big = np.concatenate([np.concatenate(tiles[:3], axis=1), np.concatenate(tiles[3:], axis=1)], axis=0)
    Image.fromarray(big).save(tmp_path / "large.png")
    status, stdout, _ = _run(capsys, "predict", out / "last.pth", "--image", tmp_path / "large.png", "--tile", "64",
                             "--score-thresh", "0.0", "-o", tmp_path / "large_pred.png", "--csv", tmp_path / "d.csv",
                             "--device", "cpu", "--no-progress")  # fmt: skip
    assert status == 0 and "detections (score >= 0)" in stdout
    with Image.open(tmp_path / "large_pred.png") as im:
        assert im.size == (192, 128)
    rows = (tmp_path / "d.csv").read_text().splitlines()[1:]
    boxes = np.array([[float(v) for v in row.split(",")[1:5]] for row in rows])
    assert len(rows) > 0 and {row.split(",")[5] for row in rows} <= {"Snag", "Tree"}
    assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= 192).all() and (boxes[:, [1, 3]] <= 128).all()
    assert boxes[:, 2].max() > 128 and boxes[:, 3].max() > 64  # mapped back from the later tiles


def _readme_commands():
    """The argument lists of the ``python -m focalops`` / ``-m focalops`` commands in the README's
    bash blocks (continued lines joined)."""
    text = open(os.path.join(ROOT, "README.md")).read()
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if "-m focalops " in line:
                yield shlex.split(line.split("-m focalops ", 1)[1].split(" #")[0])


def test_readme_commands_are_valid():
    from focalops.data import DataSpec

    commands = [argv for argv in _readme_commands() if argv[0] != "bench"]
    assert {argv[0] for argv in commands} == {"train", "eval", "predict"} and len(commands) >= 8
    for argv in commands:
        args = cli.build_parser().parse_args(argv)  # exits on an unknown flag or a bad value
        if args.command == "train":
            DataSpec(**{k: getattr(args, k) for k in DataSpec.__dataclass_fields__})  # flags that go together


def test_readme_predict_example_runs(run, tmp_path, capsys, monkeypatch):
    """The README's `predict --image docs/photo.jpg` line, on the tiny run's checkpoint."""
    argv = next(a for a in _readme_commands() if "docs/photo.jpg" in a)
    argv = [str(run / "last.pth") if a.endswith("last.pth") else a for a in argv]
    argv[argv.index("-o") + 1] = str(tmp_path / "prediction.png")
    monkeypatch.chdir(ROOT)
    status, stdout, _ = _run(capsys, *argv, "--device", "cpu", "--no-progress")
    assert status == 0 and "docs/photo.jpg" in stdout
    with Image.open(tmp_path / "prediction.png") as im:
        assert im.size == (384, 256)


def test_amp_flag_trains(tmp_path, capsys):
    # 64 px images: P6 and P7 are one pixel wide, the case where oneDNN's bfloat16 weight gradient
    # read uninitialised memory (see focalops/models/fpn.py); this run diverged before the fix.
    assert cli.main(["train", *TINY, "--iters", "2", "--amp", "--out", str(tmp_path)]) == 0


def test_bench_delegates_to_the_installed_suite(monkeypatch):
    import focalops.benchmarks.__main__ as runner

    # the installed package is the checkout's benchmarks/ (setup.py maps it), not a copy
    assert os.path.samefile(os.path.dirname(runner.__file__), os.path.join(ROOT, "benchmarks"))
    assert runner.DEFAULT_OUT == "focalops-bench-results"  # never into site-packages
    seen = []
    monkeypatch.setattr(runner, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["bench", "--quick", "--only", "retinanet"]) == 0
    assert seen == [["--quick", "--only", "retinanet"]]


def test_torchrun_two_process_gloo(tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
        "-m", "focalops", "train", *TINY, "--iters", "2", "--out", str(out),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("focalops train:") == 1  # rank-0 logging only
    assert "2 process(es)" in result.stdout
    ckpt = torch.load(out / "last.pth", weights_only=True)
    assert ckpt["iteration"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])
