"""``train``: the RetinaNet training loop as a library function (``focalops train`` calls it).

Single process, or one process per GPU under ``torchrun`` (DistributedDataParallel; NCCL on CUDA,
gloo on CPU; logging, checkpoints and evaluation on rank 0).
"""

import dataclasses
import json
import math
import os
import signal
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from focalops.engine.checkpoint import load_checkpoint, remove_stale_temporary, save_checkpoint
from focalops.engine.evaluation import amp_dtype, autocast, coco_map, resolve_device
from focalops.errors import CheckpointError, ConfigError, one_line

CHECKPOINT_NAME = "last.pth"
LOG_NAME = "train_log.jsonl"
METRICS_NAME = "metrics.json"


@dataclasses.dataclass
class TrainConfig:
    """Settings of :func:`train` (the optimisation and run flags of ``focalops train``).

    Fields: ``iters`` (total iterations; 0: ``epochs`` passes over the training set), ``epochs``,
    ``batch_size`` (images per step and process), ``optimizer`` (``"sgd"``, momentum 0.9, or
    ``"adamw"``), ``lr`` (peak), ``weight_decay``, ``warmup_iters`` (linear warm-up), ``lr_steps``
    (fractions of the run where the LR drops x10), ``clip_grad`` (gradient-norm clipping; 0: off),
    ``amp`` (None, ``"bf16"`` or ``"fp16"`` autocast; fp16 with loss scaling, CUDA only), ``device``
    (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``), ``seed`` (weights are the caller's; the seed
    draws the data order and augmentations), ``workers`` (data loader processes), ``out`` (folder
    for ``last.pth``, ``train_log.jsonl``, ``metrics.json``; None writes nothing),
    ``checkpoint_every``, ``log_every`` (iterations), ``resume`` (a checkpoint to continue from),
    ``progress`` (progress bars).

    Raises:
        ConfigError: a value out of range (naming the ``focalops train`` flag).
    """

    iters: int = 0
    epochs: int = 1
    batch_size: int = 8
    optimizer: str = "sgd"
    lr: float = 0.01
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    lr_steps: Tuple[float, ...] = (0.67, 0.89)
    clip_grad: float = 10.0
    amp: Optional[str] = None
    device: str = "auto"
    seed: int = 0
    workers: int = 2
    out: Optional[str] = None
    checkpoint_every: int = 500
    log_every: int = 10
    resume: Optional[str] = None
    progress: bool = True

    def __post_init__(self):
        self.lr_steps = tuple(float(s) for s in self.lr_steps)
        for name, low in (("iters", 0), ("epochs", 1), ("batch_size", 1), ("warmup_iters", 0), ("workers", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(self, name)}")
        for name in ("checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"--optimizer must be sgd or adamw, got {self.optimizer!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not all(0 < s <= 1 for s in self.lr_steps):
            raise ConfigError(f"--lr-steps must be fractions in (0, 1], got {self.lr_steps}")
        if not (math.isfinite(self.clip_grad) and self.clip_grad >= 0):
            raise ConfigError(f"--clip-grad must be >= 0, got {self.clip_grad}")

    def to_dict(self) -> Dict[str, Any]:
        """Plain values (stored in checkpoints)."""
        return dataclasses.asdict(self)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT (Ctrl-C) or SIGTERM after saving a checkpoint.

    Attributes: ``iteration`` (the iterations done), ``checkpoint`` (the path written, or None
    when ``out`` is None or on ranks other than 0).
    """

    def __init__(self, iteration: int, checkpoint: Optional[str]):
        super().__init__(f"training stopped at iteration {iteration}")
        self.iteration, self.checkpoint = iteration, checkpoint


def lr_factor(
    iteration: int, total: int, warmup_iters: int, steps: Sequence[float], warmup_factor: float = 0.001
) -> float:
    """LR multiplier: linear warm-up from ``warmup_factor`` over ``warmup_iters``, then x0.1 at
    each fraction in ``steps`` of ``total`` iterations."""
    factor = 0.1 ** sum(iteration >= int(s * total) for s in steps)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def train(
    model: nn.Module,
    train_set: torch.utils.data.Dataset,
    val_set: Optional[torch.utils.data.Dataset] = None,
    config: Optional[TrainConfig] = None,
    *,
    metadata: Optional[Dict[str, Any]] = None,
    log: Optional[Callable[[str], None]] = print,
) -> Dict[str, float]:
    """Trains ``model`` (a :class:`~focalops.models.RetinaNet`) on ``train_set``; evaluates it on
    ``val_set`` (COCO mAP) at the end when given.

    The data order and every sample's augmentation are drawn from ``(config.seed, iteration)``,
    so a run resumed from a checkpoint (``config.resume``) continues exactly as the uninterrupted
    run would have. SIGINT (Ctrl-C) or SIGTERM stops after the current iteration, saves
    ``last.pth`` and raises :class:`TrainingInterrupted`; a second signal stops at once.

    Args:
        model: the detector, in the torchvision calling convention (``model(images, targets)``
            returns a dict of losses); its weights are used as given (seed them before building).
        train_set, val_set: datasets of ``(image Tensor[3, H, W], {"boxes", "labels"})``; their
            ``classes`` (if any) name the labels and go into the checkpoint.
        config (TrainConfig): the settings. Default ``TrainConfig()``.
        metadata (dict): plain values to store in every checkpoint as well (e.g. how to rebuild
            the data).
        log: receives the header and result lines (rank 0); None for silence.

    Returns:
        ``{"iterations", "loss", "classification", "bbox_regression"}`` (the last logged losses)
        and, with ``val_set``, ``"AP", "AP50", "AP75"`` (rank 0; other ranks return ``{}``).

    Raises:
        ConfigError: bad settings, a batch larger than the training set, a checkpoint to resume
            that is past ``iters``.
        CheckpointError: the checkpoint to resume cannot be loaded or does not fit the model.
        DataError: a training image fails to load.
        FloatingPointError: the loss became NaN or infinite.
        TrainingInterrupted: stopped by a signal (after saving).
    """
    import torch.distributed as dist
    from tqdm import tqdm

    from focalops.data import collate

    config = config or TrainConfig()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(config.device, local_rank)
    dtype = amp_dtype(config.amp, device)
    main = rank == 0
    say = log if (main and log is not None) else (lambda line: None)
    classes = list(getattr(train_set, "classes", None) or [str(k) for k in range(model.num_classes)])
    if len(classes) != model.num_classes:
        raise ConfigError(f"the model has {model.num_classes} classes, the training set {len(classes)}: {classes}")
    schedule = _BatchSchedule(len(train_set), config.batch_size, config.seed, rank, world)
    if schedule.per_epoch == 0:
        raise ConfigError(
            f"--batch-size {config.batch_size} x {world} process(es) is more than the {len(train_set)} training images"
        )
    total = config.iters or config.epochs * schedule.per_epoch

    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, total, config.warmup_iters, config.lr_steps)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    start = _resume(config.resume, model, optimizer, scheduler, scaler) if config.resume else 0
    if start > total:
        raise ConfigError(f"--resume {config.resume} is at iteration {start}, past the {total} iterations of this run")

    checkpoint = log_path = None
    if config.out is not None and main:
        os.makedirs(config.out, exist_ok=True)
        checkpoint, log_path = os.path.join(config.out, CHECKPOINT_NAME), os.path.join(config.out, LOG_NAME)
        remove_stale_temporary(checkpoint)
        _truncate_log(log_path, start)

    def save(iteration: int) -> None:
        state = {
            "model": model.state_dict(),
            "config": model.config,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "iteration": iteration,
            "classes": classes,
            "train": config.to_dict(),
            **(metadata or {}),
        }
        save_checkpoint(checkpoint, state)

    own_group = world > 1 and not dist.is_initialized()
    if own_group:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    loader = torch.utils.data.DataLoader(
        _Seeded(train_set),
        batch_sampler=schedule.span(start, total),
        num_workers=config.workers,
        collate_fn=collate,
        worker_init_fn=_ignore_stop_signals,
    )
    describe = getattr(train_set, "describe", None)
    source = describe() if describe else type(train_set).__name__
    kinds = f"{len(classes)} class{'es' if len(classes) > 1 else ''}: {', '.join(classes)}"
    say(
        f"focalops train: {model.config.get('backbone', type(model).__name__)} on {source} ({len(train_set)} images, "
        f"{kinds}), {total} iterations x {config.batch_size} images x {world} process(es), device {device}, "
        f"amp {config.amp or 'off'}" + (f", resumed at iteration {start}" if start else "")
    )
    values: Dict[str, float] = {}
    seen, tick = 0, time.perf_counter()  # images and time since the last log line
    bar = tqdm(total=total, initial=start, desc="train", disable=not (main and config.progress), dynamic_ncols=True)
    iteration = start
    net.train()
    try:
        with _StopRequest() as stop:
            for images, targets in loader:
                images = [im.to(device, non_blocking=True) for im in images]
                with autocast(device, dtype):
                    losses = net(images, targets)
                loss = sum(losses.values())
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if config.clip_grad > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(params, config.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                iteration += 1
                seen += len(images) * world
                bar.update(1)
                at_log = iteration % config.log_every == 0 or iteration == total
                if at_log:
                    # Reading the losses syncs the device: only every log_every steps.
                    values = {k: float(v.detach()) for k, v in losses.items()}
                    if not all(math.isfinite(v) for v in values.values()):
                        raise FloatingPointError(
                            f"the loss is not finite at iteration {iteration} ({values}): lower --lr or check the data"
                        )
                    images_per_s = seen / max(time.perf_counter() - tick, 1e-9)
                    seen, tick = 0, time.perf_counter()
                    lr = scheduler.get_last_lr()[0]
                    bar.set_postfix(loss=f"{sum(values.values()):.3f}", img_s=f"{images_per_s:.1f}", lr=f"{lr:.2e}")
                    if log_path:
                        record = {"iteration": iteration, **values, "lr": lr, "images_per_s": images_per_s}
                        with open(log_path, "a") as f:
                            f.write(json.dumps(record) + "\n")
                stopping = stop.agreed(at_log, world, device)
                if checkpoint and (iteration % config.checkpoint_every == 0 or iteration == total or stopping):
                    save(iteration)
                if stopping:
                    raise TrainingInterrupted(iteration, checkpoint)
        bar.close()
        metrics: Dict[str, float] = {}
        if main:
            metrics = {"iterations": float(iteration), **({"loss": sum(values.values()), **values} if values else {})}
        if main and val_set is not None:
            val_loader = torch.utils.data.DataLoader(
                val_set, batch_size=config.batch_size, num_workers=config.workers, collate_fn=collate
            )
            scores = coco_map(model, val_loader, model.num_classes, device, dtype, progress=config.progress)
            metrics.update(scores)
            say("focalops train: val mAP " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
            if config.out is not None:
                with open(os.path.join(config.out, METRICS_NAME), "w") as f:
                    json.dump(scores, f)
        if own_group:
            dist.barrier()  # the other ranks wait for rank 0's evaluation
        return metrics
    finally:
        bar.close()
        if own_group:
            dist.destroy_process_group()


def _resume(path: str, model: nn.Module, optimizer, scheduler, scaler) -> int:
    """Loads model, optimiser, schedule and loss-scaler state; returns the iteration reached."""
    state = load_checkpoint(path)
    parts = [(model, "model"), (optimizer, "optimizer"), (scheduler, "scheduler")]
    if scaler.is_enabled() and state.get("scaler"):
        parts.append((scaler, "scaler"))
    for part, key in parts:
        if key not in state or state[key] is None:
            raise CheckpointError(f"{path}: has no {key!r} state to resume from")
        try:
            part.load_state_dict(state[key])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: its {key} state does not fit this run ({one_line(exc)})") from None
    if not isinstance(state["iteration"], int) or state["iteration"] < 0:
        raise CheckpointError(f"{path}: 'iteration' is {state['iteration']!r}, not a count")
    return state["iteration"]


def _truncate_log(path: str, iteration: int) -> None:
    """Keeps the log records up to ``iteration`` (a resumed run rewrites the rest)."""
    kept: List[str] = []
    if iteration > 0 and os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    if json.loads(line)["iteration"] <= iteration:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a crash
    with open(path, "w") as f:
        f.writelines(kept)


def _mix(*values: int) -> int:
    """A well-mixed 32-bit seed from integers (numpy's SeedSequence)."""
    return int(np.random.SeedSequence(list(values)).generate_state(1)[0])


class _BatchSchedule(torch.utils.data.Sampler):
    """The batches of a run, as ``[(index, sample_seed), ...]`` lists.

    Epoch ``e`` is a permutation of the dataset drawn from ``(seed, e)``, split between ``world``
    processes as DistributedSampler splits it (tail dropped, rank ``r`` takes every ``world``-th
    index), cut into full batches. Iteration ``i`` is batch ``i % per_epoch`` of epoch
    ``i // per_epoch``; each sample's augmentation seed is drawn from ``(seed, i, rank)``. So the
    batches from ``start`` on are the same whether or not the run stopped before ``start``.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int, world: int):
        self.size, self.batch_size, self.seed, self.rank, self.world = size, batch_size, seed, rank, world
        self.per_epoch = (size // world) // batch_size
        self.start = self.stop = 0

    def span(self, start: int, stop: int) -> "_BatchSchedule":
        """Iterations ``start`` to ``stop - 1``."""
        self.start, self.stop = start, stop
        return self

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        epoch, order = -1, None
        usable = self.size - self.size % self.world
        for it in range(self.start, self.stop):
            e, j = divmod(it, self.per_epoch)
            if e != epoch:
                generator = torch.Generator().manual_seed(_mix(self.seed, e))
                order = torch.randperm(self.size, generator=generator)[:usable][self.rank :: self.world].tolist()
                epoch = e
            indices = order[j * self.batch_size : (j + 1) * self.batch_size]
            seeds = np.random.SeedSequence([self.seed, it, self.rank]).generate_state(len(indices))
            yield [(index, int(s)) for index, s in zip(indices, seeds)]


class _Seeded(torch.utils.data.Dataset):
    """``dataset[index]`` with torch's CPU random generator seeded by the sample's own seed (the
    random transforms draw from it), then restored."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def _ignore_stop_signals(worker_id: int) -> None:
    """Data loader workers leave SIGINT/SIGTERM to the main process, which stops cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _StopRequest:
    """Turns the first SIGINT or SIGTERM into a request to stop after the current iteration (a
    second one raises KeyboardInterrupt at once). Handlers are installed only in the main thread;
    the previous ones come back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        # os.write, not print: a handler may run in the middle of another write to stderr.
        name = signal.Signals(signum).name
        message = f"\nfocalops train: {name}: stopping after this iteration to save a checkpoint (again: at once)\n"
        os.write(2, message.encode())

    def agreed(self, at_log: bool, world: int, device: torch.device) -> bool:
        """Whether to stop now. Under DDP every process must stop at the same iteration: the
        requests are combined (all-reduce) at log points only, where the step syncs anyway."""
        if world == 1:
            return self.requested
        if not at_log:
            return False
        import torch.distributed as dist

        flag = torch.tensor([float(self.requested)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
