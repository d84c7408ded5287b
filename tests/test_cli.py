"""The focalops CLI: --help, train -> eval -> predict end to end, resume, bench delegation, DDP."""

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from focalops import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--backbone", "resnet18", "--fpn-channels", "16", "--head-convs", "1", "--image-size", "64",
    "--batch-size", "2", "--train-images", "8", "--val-images", "4", "--workers", "0", "--no-progress",
    "--device", "cpu", "--warmup-iters", "2", "--log-every", "1",
]  # fmt: skip


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_help_documents_every_flag(capsys):
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == {"train", "eval", "predict", "bench"}
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    for name in ("train", "eval", "predict"):
        with pytest.raises(SystemExit) as exc:
            cli.main([name, "--help"])
        assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--amp" in out and "--resume" in out and "--backbone" in out and "--image" in out
    result = subprocess.run([sys.executable, "-m", "focalops", "--help"], capture_output=True, text=True, env=_env())
    assert result.returncode == 0 and "torchrun" in result.stdout


def test_train_eval_predict_resume_end_to_end(tmp_path, capsys):
    pytest.importorskip("pycocotools")  # COCO mAP; absent on some GPU machines
    out = tmp_path / "run"
    sizes = ["--anchor-sizes", "8,16,32,64,128"]
    first = ["train", *TINY, *sizes, "--iters", "3", "--eval", "--out", str(out), "--checkpoint-every", "2"]
    assert cli.main(first) == 0
    ckpt = torch.load(out / "last.pth", weights_only=False)
    assert ckpt["iteration"] == 3 and ckpt["classes"] == ["rectangle", "ellipse", "triangle"]
    # eval and predict rebuild the model from the checkpoint's config, anchors included.
    assert ckpt["config"]["anchor_sizes"] == (8, 16, 32, 64, 128)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"AP", "AP50", "AP75"} and all(0 <= v <= 1 for v in metrics.values())

    # Resume continues the iteration count, the schedule and the optimiser state.
    assert cli.main(["train", *TINY, *sizes, "--iters", "5", "--out", str(out), "--resume", str(out / "last.pth")]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3, 4, 5]
    assert torch.load(out / "last.pth", weights_only=False)["iteration"] == 5

    assert (
        cli.main(
            [
                "eval",
                str(out / "last.pth"),
                "--val-images",
                "4",
                "--workers",
                "0",
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "AP50" in capsys.readouterr().out

    png = tmp_path / "pred.png"
    assert cli.main(["predict", str(out / "last.pth"), "-o", str(png), "--score-thresh", "0.0", "--device", "cpu"]) == 0
    with Image.open(png) as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    # On a user image of another size: resized for the model, boxes drawn at the image's scale.
    src = tmp_path / "in.jpg"
    Image.new("RGB", (200, 100), (90, 120, 30)).save(src)
    results = cli.predict(
        cli.build_parser().parse_args(
            [
                "predict",
                str(out / "last.pth"),
                "--image",
                str(src),
                "-o",
                str(png),
                "--score-thresh",
                "0",
                "--device",
                "cpu",
            ]
        )
    )
    with Image.open(png) as im:
        assert im.size == (200, 100)
    assert all(0 <= r["box"][0] <= r["box"][2] <= 200 and 0 <= r["box"][1] <= r["box"][3] <= 100 for r in results)


@pytest.mark.parametrize("value", ["16,32,64,128", "16,32,64,128,0", "a,b,c,d,e"])
def test_bad_anchor_sizes(value, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", *TINY, "--anchor-sizes", value])
    assert exc.value.code == 2 and "five positive numbers" in capsys.readouterr().err


def test_amp_flag_trains(tmp_path):
    assert cli.main(["train", *TINY, "--iters", "2", "--amp", "--out", str(tmp_path)]) == 0
    with pytest.raises(SystemExit, match="bf16 only"):
        cli.main(["train", *TINY, "--iters", "1", "--amp", "--amp-dtype", "fp16", "--out", str(tmp_path)])


def test_bench_delegates_and_explains_when_missing(monkeypatch, capsys):
    import benchmarks.__main__ as runner

    seen = []
    monkeypatch.setattr(runner, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["bench", "--quick", "--only", "retinanet"]) == 0
    assert seen == [["--quick", "--only", "retinanet"]]
    monkeypatch.setitem(sys.modules, "benchmarks.__main__", None)
    assert cli.main(["bench"]) == 2
    assert "not importable" in capsys.readouterr().err


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
    ckpt = torch.load(out / "last.pth", weights_only=False)
    assert ckpt["iteration"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])
