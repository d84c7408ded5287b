"""``focalops train | eval | predict | bench``: the thin RetinaNet from the command line.

Multi-GPU / multi-node training: ``torchrun --nproc_per_node N -m focalops train ...``
(DistributedDataParallel, a DistributedSampler, logging and checkpoints on rank 0; NCCL on
CUDA, gloo on CPU). ``--batch-size`` is per process.
"""

import argparse
import json
import math
import os
import sys
import time
from typing import List, Optional

import torch

from focalops.models import RetinaNet, backbone_names, load_torchvision_weights

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# ---- datasets --------------------------------------------------------------------------------
def build_dataset(args, train: bool):
    """The train or validation split that ``args`` describe, with its transforms."""
    from focalops.data import (
        CocoDetection,
        Compose,
        RandomHorizontalFlip,
        Resize,
        ShapesDataset,
        VOCDetection,
    )

    transforms = [] if args.dataset == "shapes" else [Resize(args.image_size, args.max_size)]
    if train and args.flip > 0:
        transforms.append(RandomHorizontalFlip(args.flip))
    transforms = Compose(transforms) if transforms else None
    if args.dataset == "shapes":
        return ShapesDataset(
            args.train_images if train else args.val_images,
            image_size=args.image_size,
            num_classes=args.num_classes,
            max_objects=args.max_objects,
            seed=args.data_seed if train else args.data_seed + 1_000_003,
            transforms=transforms,
        )
    if args.data_root is None:
        raise SystemExit(f"focalops: --data-root is required for --dataset {args.dataset}")
    if args.dataset == "coco":
        ann = args.ann_file if train else (args.val_ann_file or args.ann_file)
        root = args.data_root if train else (args.val_root or args.data_root)
        if ann is None:
            raise SystemExit("focalops: --ann-file is required for --dataset coco")
        return CocoDetection(root, ann, transforms=transforms)
    root = args.data_root if train else (args.val_root or args.data_root)
    return VOCDetection(root, args.train_split if train else args.val_split, transforms=transforms)


def class_names(dataset) -> List[str]:
    return list(getattr(dataset, "classes", None) or dataset.categories)


def _loader(dataset, batch_size: int, shuffle: bool, workers: int, sampler=None, seed: int = 0):
    from focalops.data import collate

    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        generator=generator,
        persistent_workers=workers > 0,
        drop_last=shuffle,
    )


def _device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def _amp_dtype(args, device: torch.device) -> Optional[torch.dtype]:
    if not args.amp:
        return None
    if device.type == "cpu" and args.amp_dtype != "bf16":
        raise SystemExit("focalops: --amp on CPU supports --amp-dtype bf16 only")
    return _AMP_DTYPES[args.amp_dtype]


# ---- train -----------------------------------------------------------------------------------
def train(args) -> dict:
    """Trains a RetinaNet; returns the final metrics (rank 0; an empty dict on other ranks)."""
    import torch.distributed as dist
    from tqdm import tqdm

    from focalops.engine import autocast, coco_map, lr_factor, save_checkpoint

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(args.device, local_rank)
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main = rank == 0
    torch.manual_seed(args.seed + rank)
    amp_dtype = _amp_dtype(args, device)

    train_set = build_dataset(args, train=True)
    classes = class_names(train_set)
    sampler = (
        torch.utils.data.DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
        if world > 1
        else None
    )
    loader = _loader(train_set, args.batch_size, True, args.workers, sampler, args.seed)
    if len(loader) == 0:
        raise SystemExit(f"focalops: the training set ({len(train_set)} images) is smaller than one batch")
    total = args.iters if args.iters else args.epochs * len(loader)

    torch.manual_seed(args.seed)  # identical initial weights on every rank
    model = RetinaNet(
        len(classes),
        args.backbone,
        frozen_bn=args.frozen_bn,
        ops=args.ops,
        fpn_channels=args.fpn_channels,
        head_convs=args.head_convs,
        anchor_sizes=args.anchor_sizes,
    )
    if args.backbone_weights:
        load_torchvision_weights(model.backbone, args.backbone_weights)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    steps = [float(s) for s in args.lr_steps.split(",") if s]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, total, args.warmup_iters, steps))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    iteration = 0
    if args.resume:
        ckpt = torch.load(args.resume, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        iteration = ckpt["iteration"]
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.out, "train_log.jsonl")
    extra = {"classes": classes, "image_size": args.image_size, "max_size": args.max_size, "args": vars(args)}
    if main:
        print(
            f"focalops train: {args.backbone} on {args.dataset} ({len(train_set)} images, {len(classes)} classes), "
            f"{total} iterations x {args.batch_size} images x {world} process(es), device {device}, "
            f"amp {args.amp_dtype if amp_dtype else 'off'}, ops {args.ops}",
            flush=True,
        )
    seen, tick = 0, time.perf_counter()  # images and time since the last log line
    bar = tqdm(total=total, initial=iteration, desc="train", disable=not main or args.no_progress, dynamic_ncols=True)
    net.train()
    epoch = iteration // len(loader)
    while iteration < total:
        if sampler is not None:
            sampler.set_epoch(epoch)
        for images, targets in loader:
            if iteration >= total:
                break
            images = [im.to(device, non_blocking=True) for im in images]
            with autocast(device, amp_dtype):
                losses = net(images, targets)
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if args.clip_grad > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, args.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            iteration += 1
            seen += len(images) * world
            bar.update(1)
            if iteration % args.log_every == 0 or iteration == total:
                # Reading the losses syncs the device: only every log_every steps.
                values = {k: float(v.detach()) for k, v in losses.items()}
                images_per_s = seen / max(time.perf_counter() - tick, 1e-9)
                seen, tick = 0, time.perf_counter()
                if not all(math.isfinite(v) for v in values.values()):
                    raise FloatingPointError(f"focalops train: non-finite loss at iteration {iteration}: {values}")
                if main:
                    bar.set_postfix(
                        loss=f"{sum(values.values()):.3f}",
                        cls=f"{values['classification']:.3f}",
                        box=f"{values['bbox_regression']:.3f}",
                        img_s=f"{images_per_s:.1f}",
                        lr=f"{scheduler.get_last_lr()[0]:.2e}",
                    )
                    record = {
                        "iteration": iteration,
                        **values,
                        "lr": scheduler.get_last_lr()[0],
                        "images_per_s": images_per_s,
                    }
                    with open(log_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
            if main and (iteration % args.checkpoint_every == 0 or iteration == total):
                save_checkpoint(os.path.join(args.out, "last.pth"), model, optimizer, scheduler, iteration, extra)
        epoch += 1
    bar.close()
    metrics = {}
    if main and args.eval:
        val_loader = _loader(build_dataset(args, train=False), args.batch_size, False, args.workers)
        metrics = coco_map(model, val_loader, len(classes), device, amp_dtype, progress=not args.no_progress)
        print("focalops train: val mAP " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()), flush=True)
        with open(os.path.join(args.out, "metrics.json"), "w") as f:
            json.dump(metrics, f)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return metrics


# ---- eval / predict / bench ------------------------------------------------------------------
def evaluate(args) -> dict:
    from focalops.engine import coco_map, load_model

    device = _device(args.device)
    model, ckpt = load_model(args.checkpoint, score_thresh=args.score_thresh)
    saved = ckpt.get("args", {})
    for key in ("image_size", "max_size", "num_classes", "max_objects", "data_seed"):
        if getattr(args, key) is None:
            setattr(args, key, saved.get(key, _DATA_DEFAULTS[key]))
    dataset = build_dataset(args, train=False)
    loader = _loader(dataset, args.batch_size, False, args.workers)
    metrics = coco_map(
        model.to(device),
        loader,
        model.num_classes,
        device,
        _amp_dtype(args, device),
        progress=not args.no_progress,
    )
    print(
        f"focalops eval: {len(dataset)} images  " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()),
        flush=True,
    )
    return metrics


def predict(args) -> List[dict]:
    import numpy as np
    from PIL import Image, ImageDraw

    from focalops.data import Resize
    from focalops.engine import load_model

    device = _device(args.device)
    model, ckpt = load_model(args.checkpoint, score_thresh=args.score_thresh)
    model.to(device).eval()
    classes = ckpt.get("classes") or [str(k) for k in range(model.num_classes)]
    if args.image:
        with Image.open(args.image) as im:
            picture = im.convert("RGB")
    else:
        from focalops.data import ShapesDataset

        saved = ckpt.get("args", {})
        shapes = ShapesDataset(
            args.shapes_index + 1,
            image_size=saved.get("image_size", 192),
            num_classes=model.num_classes,
            max_objects=saved.get("max_objects", 5),
            seed=saved.get("data_seed", 0) + 1_000_003,
        )
        picture = Image.fromarray(shapes.generate(args.shapes_index)[0])
    image = torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1).float().div_(255)
    size = args.image_size or ckpt.get("image_size")
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    resized, _ = Resize(size, args.max_size or ckpt.get("max_size"))(image, empty) if size else (image, None)
    with torch.no_grad():
        out = model([resized.to(device)])[0]
    scale = torch.tensor([image.shape[-1] / resized.shape[-1], image.shape[-2] / resized.shape[-2]] * 2)
    boxes = (out["boxes"].float().cpu() * scale).tolist()
    draw = ImageDraw.Draw(picture)
    palette = [
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
    ]
    results = []
    for box, score, label in zip(boxes, out["scores"].tolist(), out["labels"].tolist()):
        colour = palette[label % len(palette)]
        text = f"{classes[label]} {score:.2f}"
        draw.rectangle(box, outline=colour, width=2)
        tx, ty = box[0] + 1, max(0, box[1] - 11)
        draw.rectangle(draw.textbbox((tx, ty), text), fill=colour)
        draw.text((tx, ty), text, fill=(0, 0, 0))
        results.append({"box": [round(v, 1) for v in box], "score": round(score, 4), "label": classes[label]})
    picture.save(args.output)
    print(f"focalops predict: {len(results)} detections -> {args.output}")
    for r in results:
        print(f"  {r['label']:<12} {r['score']:.3f}  {r['box']}")
    return results


def bench(argv: List[str]) -> int:
    # An editable install maps only the focalops package: find benchmarks/ beside it.
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isfile(os.path.join(checkout, "benchmarks", "__main__.py")) and checkout not in sys.path:
        sys.path.insert(0, checkout)
    try:
        from benchmarks.__main__ import main as bench_main
    except ImportError:
        print(
            "focalops bench: the benchmark runner (the `benchmarks` package of the focalops source tree) is not "
            "importable; focalops was installed without it. Run `python -m benchmarks` from a source checkout "
            "(or put the checkout on PYTHONPATH).",
            file=sys.stderr,
        )
        return 2
    return bench_main(argv)


# ---- argument parsing ------------------------------------------------------------------------
_DATA_DEFAULTS = {"image_size": 192, "max_size": None, "num_classes": 3, "max_objects": 5, "data_seed": 0}


def _anchor_sizes(text: str) -> tuple:
    try:
        sizes = tuple(float(v) for v in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 5 or not all(math.isfinite(v) and v > 0 for v in sizes):
        raise argparse.ArgumentTypeError(f"expected five positive numbers (P3-P7), got {text!r}")
    return tuple(int(v) if v.is_integer() else v for v in sizes)


def _add_data_args(p: argparse.ArgumentParser, from_checkpoint: bool = False) -> None:
    d = (lambda key: None) if from_checkpoint else (lambda key: _DATA_DEFAULTS[key])
    note = " (default: as the checkpoint was trained)" if from_checkpoint else ""
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        choices=["shapes", "coco", "voc"],
        default="shapes",
        help="shapes: the embedded synthetic set (offline); coco: COCO JSON; voc: Pascal VOC folder. Default shapes",
    )
    g.add_argument(
        "--image-size",
        type=int,
        default=d("image_size"),
        help="shapes: image side in pixels; coco/voc: shorter side after resizing. Default 192" + note,
    )
    g.add_argument(
        "--max-size",
        type=int,
        default=d("max_size"),
        help="coco/voc: cap on the longer side after resizing" + note,
    )
    g.add_argument(
        "--num-classes",
        type=int,
        default=d("num_classes"),
        help="shapes: number of shape classes, 1-6. Default 3" + note,
    )
    g.add_argument(
        "--max-objects",
        type=int,
        default=d("max_objects"),
        help="shapes: at most this many shapes per image. Default 5" + note,
    )
    g.add_argument(
        "--data-seed",
        type=int,
        default=d("data_seed"),
        help="shapes: seed of the generated images. Default 0" + note,
    )
    g.add_argument("--train-images", type=int, default=2000, help="shapes: training images per epoch. Default 2000")
    g.add_argument("--val-images", type=int, default=200, help="shapes: validation images. Default 200")
    g.add_argument(
        "--data-root",
        help="coco: training image folder; voc: the VOC folder (holding Annotations/, JPEGImages/)",
    )
    g.add_argument("--ann-file", help="coco: training annotation JSON")
    g.add_argument("--val-root", help="coco/voc: validation image folder / VOC folder (default: --data-root)")
    g.add_argument("--val-ann-file", help="coco: validation annotation JSON (default: --ann-file)")
    g.add_argument(
        "--train-split",
        default="trainval",
        help="voc: training image set (ImageSets/Main/<name>.txt). Default trainval",
    )
    g.add_argument("--val-split", default="test", help="voc: validation image set. Default test")
    g.add_argument("--workers", type=int, default=2, help="data loader worker processes. Default 2")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="focalops", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train", help="train a RetinaNet", description="Train a RetinaNet (then evaluate it with --eval)."
    )
    _add_data_args(p)
    g = p.add_argument_group("model")
    g.add_argument("--backbone", choices=backbone_names(), default="resnet50", help="ResNet depth. Default resnet50")
    g.add_argument("--frozen-bn", action="store_true", help="freeze the backbone BatchNorm (for pretrained weights)")
    g.add_argument("--backbone-weights", help="a local torchvision ResNet ImageNet state dict (.pth) to start from")
    g.add_argument("--fpn-channels", type=int, default=256, help="channels of the pyramid and heads. Default 256")
    g.add_argument("--head-convs", type=int, default=4, help="conv layers in each head. Default 4")
    g.add_argument(
        "--anchor-sizes",
        type=_anchor_sizes,
        default=(32, 64, 128, 256, 512),
        help="base anchor size (pixels) of P3-P7, five comma-separated numbers; match them to the object "
        "sizes (e.g. 16,32,64,128,256 for 128 px shapes images). Default 32,64,128,256,512 (the paper's, "
        "for 800 px images)",
    )
    g.add_argument(
        "--ops",
        choices=["focalops", "reference"],
        default="focalops",
        help="run the loss and post-processing on focalops ops or on focalops.reference. Default focalops",
    )
    g = p.add_argument_group("optimisation")
    g.add_argument(
        "--epochs", type=int, default=1, help="passes over the training set (ignored with --iters). Default 1"
    )
    g.add_argument("--iters", type=int, default=0, help="total iterations (overrides --epochs when > 0)")
    g.add_argument("--batch-size", type=int, default=8, help="images per step and process. Default 8")
    g.add_argument(
        "--optimizer",
        choices=["sgd", "adamw"],
        default="sgd",
        help="SGD (momentum 0.9) or AdamW. Default sgd",
    )
    g.add_argument("--lr", type=float, default=0.01, help="peak learning rate. Default 0.01")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay. Default 1e-4")
    g.add_argument("--warmup-iters", type=int, default=100, help="linear warm-up iterations. Default 100")
    g.add_argument(
        "--lr-steps",
        default="0.67,0.89",
        help="fractions of the run where the LR drops x10. Default 0.67,0.89",
    )
    g.add_argument("--clip-grad", type=float, default=10.0, help="gradient-norm clipping (0: off). Default 10")
    g.add_argument("--amp", action="store_true", help="autocast mixed precision (--amp-dtype)")
    g.add_argument(
        "--amp-dtype",
        choices=sorted(_AMP_DTYPES),
        default="bf16",
        help="bf16 (CPU or CUDA) or fp16 (CUDA, with loss scaling). Default bf16",
    )
    g.add_argument("--flip", type=float, default=0.5, help="probability of a horizontal flip. Default 0.5")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help="seed of weights and data order. Default 0")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto. Default auto")
    g.add_argument(
        "--out",
        default="runs/retinanet",
        help="folder for last.pth, train_log.jsonl, metrics.json. Default runs/retinanet",
    )
    g.add_argument("--resume", help="checkpoint to resume from (weights, optimiser, schedule, iteration)")
    g.add_argument(
        "--checkpoint-every",
        type=int,
        default=500,
        help="save last.pth every N iterations (and at the end). Default 500",
    )
    g.add_argument("--log-every", type=int, default=10, help="log the losses every N iterations. Default 10")
    g.add_argument("--eval", action="store_true", help="report COCO mAP on the validation split after training")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser(
        "eval",
        help="COCO mAP (AP, AP50, AP75) of a checkpoint",
        description="COCO mAP of a checkpoint (pycocotools).",
    )
    p.add_argument("checkpoint", help="a last.pth written by train")
    _add_data_args(p, from_checkpoint=True)
    p.add_argument("--batch-size", type=int, default=8, help="images per batch. Default 8")
    p.add_argument("--score-thresh", type=float, default=0.05, help="detection score threshold. Default 0.05")
    p.add_argument("--amp", action="store_true", help="autocast mixed precision")
    p.add_argument("--amp-dtype", choices=sorted(_AMP_DTYPES), default="bf16", help="bf16 or fp16 (CUDA). Default bf16")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto. Default auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "predict",
        help="draw detections on an image",
        description="Draw detections (boxes, labels, scores) on an image; write a PNG.",
    )
    p.add_argument("checkpoint", help="a last.pth written by train")
    p.add_argument("--image", help="input image (any format PIL reads); default: a validation image of the shapes set")
    p.add_argument(
        "--shapes-index",
        type=int,
        default=0,
        help="which shapes validation image to use without --image. Default 0",
    )
    p.add_argument("--output", "-o", default="prediction.png", help="output PNG. Default prediction.png")
    p.add_argument("--score-thresh", type=float, default=0.3, help="draw detections above this score. Default 0.3")
    p.add_argument(
        "--image-size",
        type=int,
        help="resize the shorter side to this first (default: as trained for coco/voc)",
    )
    p.add_argument("--max-size", type=int, help="cap on the longer side when resizing")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto. Default auto")

    p = sub.add_parser(
        "bench",
        help="run the benchmark suite (python -m benchmarks)",
        add_help=False,
        description="Runs `python -m benchmarks` with the remaining arguments (see `focalops bench --help`).",
    )
    p.add_argument(
        "bench_args",
        nargs=argparse.REMAINDER,
        help="arguments of python -m benchmarks (--quick, --only, --device, --out)",
    )
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        # Everything after `bench` belongs to the benchmark runner (its own --help included).
        return bench(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "train":
        train(args)
    elif args.command == "eval":
        evaluate(args)
    else:
        predict(args)
    return 0
