"""``focalops train | eval | predict | export | bench``: the thin RetinaNet from the command line.

Multi-GPU / multi-node training: ``torchrun --nproc_per_node N -m focalops train ...``
(DistributedDataParallel, a DistributedSampler, logging and checkpoints on rank 0; NCCL on
CUDA, gloo on CPU). ``--batch-size`` is per process.

Exit status: 0 done; 1 bad data, a bad checkpoint or a failed run; 2 a usage error; 130 stopped
by Ctrl-C (training saves a checkpoint first). Errors are one line on stderr naming the file or
flag; ``--debug`` shows the traceback instead.
"""

import argparse
import contextlib
import math
import os
import sys
import warnings
from typing import Dict, List, Optional, Set

from focalops.models import backbone_names

# The packages of the `focalops[cli]` extra, by import name: a missing one is named in one line.
_EXTRA_PACKAGES = {"PIL": "pillow", "tqdm": "tqdm", "pycocotools": "pycocotools", "matplotlib": "matplotlib",
                   "numpy": "numpy"}  # fmt: skip
_AMP_DTYPES = ("bf16", "fp16")
# Flags that describe the invocation, not the run: never restored from a checkpoint.
_NOT_RESTORED = {"command", "resume", "debug", "no_progress", "out"}
_SHOWN_DETECTIONS = 20


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---- train -----------------------------------------------------------------------------------
def _train(args, explicit: Set[str]) -> int:
    import torch

    from focalops.engine import TrainConfig, TrainingInterrupted, load_checkpoint, train
    from focalops.models import RetinaNet, load_torchvision_weights

    progress = not args.no_progress
    saved_classes = None
    if args.resume:
        # Continue the run as it was: every flag not given now comes from the checkpoint.
        saved = load_checkpoint(args.resume)
        for key, value in saved.get("args", {}).items():
            if key not in explicit and key not in _NOT_RESTORED and hasattr(args, key):
                setattr(args, key, value)
        if "out" not in explicit:  # the run goes on in the checkpoint's folder, wherever it is now
            args.out = os.path.dirname(os.path.abspath(args.resume))
        saved_classes = saved.get("classes")
    spec = _data_spec(args)
    if saved_classes and spec.dataset != "shapes" and "classes" not in explicit:
        spec = spec.replace(classes=saved_classes)  # the label order of the run being continued
    config = TrainConfig(
        iters=args.iters,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_iters=args.warmup_iters,
        lr_steps=args.lr_steps,
        clip_grad=args.clip_grad,
        amp=args.amp_dtype if args.amp else None,
        device=args.device,
        seed=args.seed,
        workers=args.workers,
        out=args.out,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        resume=args.resume,
        progress=progress,
    )
    # The training set, and with --eval the validation set, are built and checked (every file, box
    # and label) before the first iteration.
    train_set = spec.build("train", progress=progress)
    val_set = spec.build("val", classes=train_set.classes, progress=progress) if args.eval else None
    torch.manual_seed(args.seed)  # the initial weights (identical on every rank)
    model = RetinaNet(
        len(train_set.classes),
        args.backbone,
        frozen_bn=args.frozen_bn,
        ops=args.ops,
        fpn_channels=args.fpn_channels,
        head_convs=args.head_convs,
        anchor_sizes=args.anchor_sizes,
    )
    if args.backbone_weights:
        load_torchvision_weights(model.backbone, args.backbone_weights)
    run = {k: v for k, v in vars(args).items() if k not in _NOT_RESTORED}
    try:
        train(model, train_set, val_set, config, metadata={"data": spec.to_dict(), "args": run})
    except TrainingInterrupted as stop:
        if stop.checkpoint:
            print(
                f"focalops train: stopped at iteration {stop.iteration}; saved {stop.checkpoint} "
                f"(continue with: focalops train --resume {stop.checkpoint})",
                file=sys.stderr,
            )
        return 130
    return 0


def _data_spec(args):
    """The DataSpec of the data flags."""
    from focalops.data import DataSpec

    return DataSpec(**{k: getattr(args, k) for k in DataSpec.__dataclass_fields__})


# ---- eval / predict --------------------------------------------------------------------------
def _checkpoint_spec(ckpt: Dict, args, explicit: Set[str]):
    """The data a checkpoint was trained on, with the data flags given now applied."""
    from focalops.data import DataSpec
    from focalops.errors import ConfigError

    given = {k: getattr(args, k) for k in DataSpec.__dataclass_fields__ if k in explicit}
    saved = ckpt.get("data")
    if not isinstance(saved, dict):
        if "dataset" not in given:
            raise ConfigError(
                f"{args.checkpoint} does not record its data (not written by focalops train): pass --dataset and "
                "its flags"
            )
        return DataSpec(**given)
    base = DataSpec.from_dict(saved)
    if given.get("dataset", base.dataset) != base.dataset:  # another kind of data: only the scale carries over
        base = DataSpec(image_size=base.image_size, max_size=base.max_size, dataset=given["dataset"])
    return base.replace(**given)


def _eval(args, explicit: Set[str]) -> int:
    from focalops.engine import evaluate, load_model

    progress = not args.no_progress
    model, ckpt = load_model(args.checkpoint, score_thresh=args.score_thresh)
    spec = _checkpoint_spec(ckpt, args, explicit)
    dataset = spec.build("val", classes=_classes(ckpt, model), progress=progress)
    source = dataset.describe()
    if spec.val_is_train():
        source += " - the training images: no separate validation data was given (--val-root / --val-ann-file)"
    print(f"focalops eval: {len(dataset)} images from {source}", flush=True)
    metrics = evaluate(
        model,
        dataset,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        amp=args.amp_dtype if args.amp else None,
        progress=progress,
    )
    print("focalops eval: " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()), flush=True)
    return 0


def _classes(ckpt: Dict, model) -> List[str]:
    classes = ckpt.get("classes")
    return list(classes) if classes else [str(k) for k in range(model.num_classes)]


def _predict(args, explicit: Set[str]) -> int:
    from PIL import Image

    from focalops.data import IMAGE_EXTENSIONS, read_image
    from focalops.engine import detect, draw, load_model, records, resolve_device, write_detections
    from focalops.errors import ConfigError

    # The model keeps every score; --score-thresh applies after, so the best score is known.
    model, ckpt = load_model(args.checkpoint, score_thresh=0.0)
    model.to(resolve_device(args.device)).eval()
    classes = _classes(ckpt, model)
    spec = _checkpoint_spec(ckpt, args, explicit) if isinstance(ckpt.get("data"), dict) else None
    image_size, max_size = (spec.image_size, spec.max_size) if spec else (args.image_size, args.max_size)
    folder = args.image is not None and os.path.isdir(args.image)
    if folder:
        names = sorted(n for n in os.listdir(args.image) if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS)
        if not names:
            raise ConfigError(f"--image {args.image}: the folder holds no image ({', '.join(IMAGE_EXTENSIONS)})")
        inputs = [os.path.join(args.image, n) for n in names]
        pictures = _picture_names(inputs, args.output or "predictions") if not args.no_draw else {}
        if pictures:
            os.makedirs(args.output or "predictions", exist_ok=True)
    else:
        inputs = [args.image]
        pictures = {} if args.no_draw else {args.image: args.output or "prediction.png"}
    rows = []
    for path in inputs:
        if path is None:
            if spec is None:
                raise ConfigError(f"{args.checkpoint} does not record its data: pass --image")
            dataset = spec.build("val", classes=classes, raw=True)
            if not 0 <= args.val_index < len(dataset):
                raise ConfigError(f"--val-index must be in [0, {len(dataset)}), got {args.val_index}")
            image = dataset[args.val_index][0]
            name = f"validation image {args.val_index} of {spec.dataset}"
        else:
            image, name = read_image(path), path
        found = detect(
            model,
            image,
            image_size=image_size,
            max_size=max_size,
            tile=args.tile,
            overlap=args.tile_overlap,
            batch_size=args.batch_size,
            score_thresh=args.score_thresh,
            progress=not args.no_progress,
        )
        rows += records(name, found, classes)
        output = pictures.get(path)
        if output:
            picture = Image.fromarray(image.mul(255).round().byte().permute(1, 2, 0).numpy())
            draw(picture, found, classes).save(output)
        _report(name, found, args.score_thresh, output, classes, detail=not folder)
    for path, fmt in ((args.json, "json"), (args.csv, "csv")):
        if path:
            write_detections(path, rows, fmt)
            print(f"focalops predict: {len(rows)} detections -> {path}")
    return 0


def _picture_names(paths: List[str], folder: str) -> Dict[str, str]:
    """Input image -> output PNG in ``folder``: ``<stem>.png``, or ``<stem>_<ext>.png`` where two
    inputs share a stem."""
    stems = [os.path.splitext(os.path.basename(p)) for p in paths]
    shared = {stem for stem, _ in stems if sum(s == stem for s, _ in stems) > 1}
    return {
        p: os.path.join(folder, f"{stem}_{ext[1:]}.png" if stem in shared else f"{stem}.png")
        for p, (stem, ext) in zip(paths, stems)
    }


def _report(name: str, found: Dict, thresh: float, output: Optional[str], classes: List[str], detail: bool) -> None:
    """One line per image (and, for a single image, its detections); when nothing passed the
    threshold, the best score the model gave."""
    count = found["scores"].numel()
    where = f" -> {output}" if output else ""
    if count:
        print(f"focalops predict: {name}: {count} detections (score >= {thresh:g}){where}")
    elif found["best_score"] is None:
        print(f"focalops predict: {name}: no detections (the model returned no box at all){where}")
    else:
        print(
            f"focalops predict: {name}: no detection scored >= {thresh:g} (the best score was "
            f"{found['best_score']:.3f}; lower --score-thresh to see more){where}"
        )
    if detail:
        from focalops.engine import records

        for row in records(name, {k: v[:_SHOWN_DETECTIONS] for k, v in found.items() if k != "best_score"}, classes):
            box = [row[k] for k in ("xmin", "ymin", "xmax", "ymax")]
            print(f"  {row['label']:<12} {row['score']:.3f}  {box}")
        if count > _SHOWN_DETECTIONS:
            print(f"  ... and {count - _SHOWN_DETECTIONS} more (--json / --csv write them all)")


# ---- bench -----------------------------------------------------------------------------------
def bench(argv: List[str]) -> int:
    """``focalops bench ARGS``: the benchmark suite (``focalops.benchmarks``, the checkout's
    ``benchmarks/`` as installed) with its own arguments."""
    from focalops.benchmarks.__main__ import main as bench_main

    return bench_main(argv)


# ---- argument parsing ------------------------------------------------------------------------
def _positive_numbers(count: int, what: str):
    def parse(text: str) -> tuple:
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) != count or not all(math.isfinite(v) and v > 0 for v in values):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return tuple(int(v) if v.is_integer() else v for v in values)

    return parse


_anchor_sizes = _positive_numbers(5, "five positive numbers (P3-P7)")


def _fractions(text: str) -> tuple:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected fractions in (0, 1] separated by commas, got {text!r}") from None
    if not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected fractions in (0, 1] separated by commas, got {text!r}")
    return values


def _names(text: str) -> List[str]:
    names = [n.strip() for n in text.split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected distinct non-empty names separated by commas, got {text!r}")
    return names


def _add_data_args(p: argparse.ArgumentParser, for_eval: bool = False) -> None:
    """The data flags; ``eval`` and ``predict`` take them as overrides of the checkpoint's."""
    note = " (default: as the checkpoint was trained)" if for_eval else ""
    g = p.add_argument_group("data" + note)
    g.add_argument(
        "--dataset",
        default="shapes",
        help="shapes: the embedded synthetic set (offline); coco: COCO JSON; voc: Pascal VOC XML (a VOCdevkit "
        "folder or a flat folder of XML beside the images). Default shapes",
    )
    g.add_argument(
        "--image-size",
        type=int,
        default=192,
        help="shapes: image side in pixels; coco/voc: shorter side after resizing. Default 192",
    )
    g.add_argument("--max-size", type=int, help="coco/voc: cap on the longer side after resizing")
    if not for_eval:
        g.add_argument(
            "--classes",
            type=_names,
            help="coco/voc: class names a,b,c (label order). Default: discovered from the training annotations "
            "(sorted; coco: its categories), stored in the checkpoint",
        )
    g.add_argument("--num-classes", type=int, default=3, help="shapes: number of shape classes, 1-6. Default 3")
    g.add_argument("--max-objects", type=int, default=5, help="shapes: at most this many shapes per image. Default 5")
    g.add_argument("--data-seed", type=int, default=0, help="shapes: seed of the generated images. Default 0")
    if not for_eval:
        g.add_argument("--train-images", type=int, default=2000, help="shapes: training images. Default 2000")
    g.add_argument("--val-images", type=int, default=200, help="shapes: validation images. Default 200")
    g.add_argument(
        "--data-root",
        help="coco: training image folder; voc: a VOCdevkit year folder (Annotations/, JPEGImages/, "
        "ImageSets/Main/) or a flat folder of .xml files beside their images",
    )
    g.add_argument("--ann-file", help="coco: training annotation JSON")
    g.add_argument(
        "--val-root",
        help="coco: validation image folder; voc: validation folder, either layout (default: --data-root)",
    )
    g.add_argument("--val-ann-file", help="coco: validation annotation JSON (default: --ann-file)")
    if not for_eval:
        g.add_argument(
            "--train-split",
            help="voc, VOCdevkit layout: training image set (ImageSets/Main/<name>.txt). Default trainval",
        )
    g.add_argument("--val-split", help="voc, VOCdevkit layout: validation image set. Default test")
    g.add_argument(
        "--voc-one-based",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="voc: boxes in the Pascal devkit's 1-based pixel coordinates, taken as (xmin-1, ymin-1, xmax, ymax) "
        "(the default); --no-voc-one-based for 0-based tools (LabelImg, DeepForest): boxes as written",
    )
    g.add_argument("--workers", type=int, default=2, help="data loader worker processes. Default 2")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="focalops", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    # Options several commands share, stated once.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="on failure, show the Python traceback")
    running = argparse.ArgumentParser(add_help=False)
    running.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto. Default auto")
    running.add_argument("--no-progress", action="store_true", help="no progress bars")
    amp = argparse.ArgumentParser(add_help=False)
    amp.add_argument("--amp", action="store_true", help="autocast mixed precision (--amp-dtype)")
    amp.add_argument(
        "--amp-dtype",
        choices=_AMP_DTYPES,
        default="bf16",
        help="bf16 (CPU or CUDA) or fp16 (CUDA; training scales the loss). Default bf16",
    )

    p = sub.add_parser(
        "train",
        parents=[common, running, amp],
        help="train a RetinaNet",
        description="Train a RetinaNet (then evaluate it with --eval). Ctrl-C saves a checkpoint; --resume "
        "continues it exactly.",
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
        type=_fractions,
        default=(0.67, 0.89),
        help="fractions of the run where the LR drops x10. Default 0.67,0.89",
    )
    g.add_argument("--clip-grad", type=float, default=10.0, help="gradient-norm clipping (0: off). Default 10")
    g.add_argument("--flip", type=float, default=0.5, help="probability of a horizontal flip. Default 0.5")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help="seed of weights, data order and augmentation. Default 0")
    g.add_argument(
        "--out",
        default="runs/retinanet",
        help="folder for last.pth, train_log.jsonl, metrics.json. Default runs/retinanet",
    )
    g.add_argument(
        "--resume",
        help="continue the run a checkpoint was saved from, in the checkpoint's folder (weights, optimiser, "
        "schedule, data order; every flag not given again)",
    )
    g.add_argument(
        "--checkpoint-every",
        type=int,
        default=500,
        help="save last.pth every N iterations (also at the end and on Ctrl-C). Default 500",
    )
    g.add_argument("--log-every", type=int, default=10, help="log the losses every N iterations. Default 10")
    g.add_argument(
        "--eval",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="report COCO mAP on the validation data after training (checked before the first iteration)",
    )

    p = sub.add_parser(
        "eval",
        parents=[common, running, amp],
        help="COCO mAP (AP, AP50, AP75) of a checkpoint",
        description="COCO mAP of a checkpoint (pycocotools) on the validation data it was trained with (restored "
        "from the checkpoint: dataset, folders, splits, classes, image size; data flags override).",
    )
    p.add_argument("checkpoint", help="a last.pth written by train")
    _add_data_args(p, for_eval=True)
    p.add_argument("--batch-size", type=int, default=8, help="images per batch. Default 8")
    p.add_argument("--score-thresh", type=float, default=0.05, help="detection score threshold. Default 0.05")

    p = sub.add_parser(
        "predict",
        parents=[common, running],
        help="draw detections on images; write them as JSON/CSV",
        description="Detect objects on an image or a folder of images at their full size (whole, resized to the "
        "training scale, or in tiles with --tile for large rasters); draw them (PNG) and/or write them "
        "(--json, --csv).",
    )
    p.add_argument("checkpoint", help="a last.pth written by train")
    p.add_argument(
        "--image",
        help="an image (any format PIL reads) or a folder of images; default: a validation image of the checkpoint's "
        "data (--val-index)",
    )
    p.add_argument(
        "--val-index",
        type=int,
        default=0,
        help="which validation image of the checkpoint's data to use without --image. Default 0",
    )
    p.add_argument(
        "--output",
        "-o",
        help="output PNG (default prediction.png), or for a folder of images the output folder (default predictions)",
    )
    p.add_argument("--no-draw", action="store_true", help="write no pictures (with --json / --csv)")
    p.add_argument("--json", help="write every detection to this JSON file")
    p.add_argument("--csv", help="write every detection to this CSV file (image_path,xmin,ymin,xmax,ymax,label,score)")
    p.add_argument("--score-thresh", type=float, default=0.3, help="keep detections above this score. Default 0.3")
    p.add_argument(
        "--tile",
        type=int,
        help="cut the image into SIZE x SIZE pixel tiles, each resized as the training images were, and merge their "
        "detections (large rasters: use about the size of the training images)",
    )
    p.add_argument(
        "--tile-overlap",
        type=float,
        default=0.25,
        help="overlap of neighbouring tiles, a fraction of --tile; objects up to that size are seen whole in some "
        "tile. Default 0.25",
    )
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass. Default 4")
    p.add_argument(
        "--image-size",
        type=int,
        help="resize the shorter side (of the image or of each tile) to this (default: as trained)",
    )
    p.add_argument("--max-size", type=int, help="cap on the longer side when resizing (default: as trained)")

    p = sub.add_parser(
        "export",
        parents=[common],
        help="write the whole detector as a torch.export program (and an AOTInductor package) or an ONNX model",
        description="Exports the inference path of a checkpoint (normalise, pad, backbone, FPN, heads, anchors, "
        "post-processing) as one torch.export program with dynamic batch and image size; load it with "
        "`import focalops; torch.export.load(path).module()`. With --onnx: an ONNX model of standard operators "
        "that ONNX Runtime runs without focalops (`onnxruntime.InferenceSession(path)`).",
    )
    _add_export_arguments(p)

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


def _explicit(argv: List[str], command: str) -> Set[str]:
    """The options given on the command line (not taken from their defaults)."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for action in subparsers.choices[command]._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command"}


def _failure(exc: BaseException) -> tuple:
    """``(exit status, one-line message)`` for an exception that ends a command."""
    from focalops.errors import CheckpointError, ConfigError, DataError, one_line

    if isinstance(exc, ConfigError):
        return 2, one_line(exc, limit=1000)
    if isinstance(exc, (DataError, CheckpointError)):
        return 1, one_line(exc, limit=1000)
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(exc, FloatingPointError):
        return 1, f"training diverged: {one_line(exc)}"
    if isinstance(exc, ModuleNotFoundError) and exc.name in _EXTRA_PACKAGES:
        return 1, f"needs the Python package {_EXTRA_PACKAGES[exc.name]!r}: pip install 'focalops[cli]'"
    if isinstance(exc, OSError) and exc.filename is not None:
        return 1, f"{exc.filename}: {exc.strerror or one_line(exc)}"
    return 1, f"internal error: {type(exc).__name__}: {one_line(exc)} (run again with --debug for the traceback)"


@contextlib.contextmanager
def _one_line_warnings():
    """Warnings as ``focalops: warning: <message>`` lines (no source line, no location)."""
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, category, *rest, **kw: print(
            f"focalops: warning: {message}", file=sys.stderr
        )
        yield


def _export(args, explicit) -> int:
    """``focalops export``: writes the program (and AOTInductor package) or the ONNX model."""
    from focalops.engine import aoti_path, export_checkpoint
    from focalops.errors import ConfigError, one_line

    onnx = getattr(args, "onnx", False)
    try:
        path = export_checkpoint(args.checkpoint, args.output, args.score_thresh, args.image_size, args.aoti, onnx)
    except ImportError as exc:
        if not onnx:
            raise
        raise ConfigError(f"--onnx: {one_line(exc)}") from None
    written = [path] + ([aoti_path(path)] if args.aoti else [])
    kind = "ONNX model" if onnx else "program"
    print("focalops export: wrote " + " and ".join(written) + f" ({os.path.getsize(path) / 2**20:.1f} MiB {kind})")
    return 0


def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``focalops export CKPT -o model.pt2 [--score-thresh T] [--image-size S] [--aoti | --onnx]``."""
    parser.add_argument("checkpoint", help="a last.pth written by train")
    parser.add_argument("--output", "-o", required=True, help="the torch.export program to write (model.pt2)")
    parser.add_argument("--score-thresh", type=float, help="detection score threshold (default: the checkpoint's)")
    parser.add_argument(
        "--image-size",
        type=int,
        help="example input size traced and recorded as the resize to apply (default: as trained, else 512); "
        "the program takes any size",
    )
    formats = parser.add_mutually_exclusive_group()
    formats.add_argument(
        "--aoti",
        action="store_true",
        help="also write an AOTInductor package (<output stem>.aoti.pt2); compiles C++: minutes",
    )
    formats.add_argument(
        "--onnx",
        action="store_true",
        help="write an ONNX model (standard operators, opset 18; runs in ONNX Runtime without focalops) "
        "to --output (model.onnx) instead; needs onnx and onnxscript",
    )


_COMMANDS = {"train": _train, "eval": _eval, "predict": _predict, "export": _export}


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        # Everything after `bench` belongs to the benchmark runner (its own --help included).
        return bench(argv[1:])
    args = build_parser().parse_args(argv)  # a usage error: one line, exit status 2
    try:
        with _one_line_warnings():
            return _COMMANDS[args.command](args, _explicit(argv, args.command))
    except BrokenPipeError:  # the reader went away (`focalops predict ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (Exception, KeyboardInterrupt) as exc:
        if getattr(args, "debug", False):
            raise
        status, message = _failure(exc)
        print(f"focalops {args.command}: error: {message}", file=sys.stderr)
        return status
