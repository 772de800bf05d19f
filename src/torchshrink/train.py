"""Training: ``fit()`` with callbacks, checkpoints, exact resume, and DDP.

One loop serves baseline training and every technique's fine-tuning; techniques plug in
as :class:`Callback` objects (pruning schedules, regularizers, proximal steps).

* **Checkpoints** are written atomically (temp file + ``os.replace``) at the end of every
  epoch: model, optimizer, LR schedule, callbacks, RNG state and history. ``resume=True``
  continues from the last one and ends with the same weights as an uninterrupted run
  of the same seed (the data order of each epoch is a function of seed and epoch).
  Checkpoints are read with ``torch.load(weights_only=True)``: no code executes.
* **Distributed**: launched under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in
  ``DistributedDataParallel`` (gloo on CPU, NCCL on GPU), each rank trains on its shard
  of every epoch's permutation, and rank 0 writes the checkpoints.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import Dataset, TensorDataset, default_collate

from .errors import CheckpointError, TrainingError
from .files import atomic_write

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

CHECKPOINT_FORMAT = "torchshrink-checkpoint/1"


class TrainConfig(BaseModel):
    """Hyper-parameters of one training run (a recipe's ``train``/``finetune`` block)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    # Bounded so that torch's optimizers can cast them to float32 (1e308 overflows inside
    # SGD's update); no network trains at a learning rate near these bounds.
    lr: float = Field(0.05, gt=0, le=1e3)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0, le=1e3)
    schedule: Literal["constant", "cosine", "step", "multistep"] = "cosine"
    step_size: int = Field(30, ge=1, description="epochs between decays ('step')")
    gamma: float = Field(0.1, gt=0, le=1)
    milestones: list[int] = Field(default_factory=list, description="epochs ('multistep')")
    warmup_epochs: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0)


@dataclass
class TrainContext:
    """What callbacks see: the (unwrapped) model, optimizer and the loop position."""

    model: nn.Module
    config: TrainConfig
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer | None = None
    epoch: int = 0
    step: int = 0
    rank: int = 0
    world_size: int = 1
    logs: dict[str, float] = field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs


class Callback:
    """Hooks into :func:`fit`; every method is optional.

    Order within a step: ``on_step_begin`` → forward → ``loss`` terms added →
    backward → ``after_backward`` → optimizer step → ``on_step_end``.
    """

    def on_train_begin(self, ctx: TrainContext) -> None: ...
    def on_epoch_begin(self, ctx: TrainContext) -> None: ...
    def on_step_begin(self, ctx: TrainContext) -> None: ...
    def loss(self, ctx: TrainContext) -> torch.Tensor | None: ...
    def after_backward(self, ctx: TrainContext) -> None: ...
    def on_step_end(self, ctx: TrainContext) -> None: ...
    def on_epoch_end(self, ctx: TrainContext) -> None: ...
    def on_train_end(self, ctx: TrainContext) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """Callback state for checkpoints (tensors, numbers, strings, lists, dicts)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# ---------------------------------------------------------------- distributed helpers
def distributed_env() -> tuple[int, int]:
    """(rank, world size) from an initialized process group or torchrun's environment."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Initialize the default process group when launched by torchrun (idempotent)."""
    rank, world = distributed_env()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    return rank, world


# ---------------------------------------------------------------- optim and schedule
def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at ``step`` (linear warm-up, then schedule)."""
    epoch = step / steps_per_epoch
    warm = 1.0 if cfg.warmup_epochs <= 0 else min(1.0, (epoch + 1 / steps_per_epoch) / cfg.warmup_epochs)
    if cfg.schedule == "cosine":
        total = max(1, cfg.epochs * steps_per_epoch)
        return warm * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    if cfg.schedule == "step":
        return warm * cfg.gamma ** (int(epoch) // cfg.step_size)
    if cfg.schedule == "multistep":
        return warm * cfg.gamma ** sum(int(epoch) >= m for m in cfg.milestones)
    return warm


# ---------------------------------------------------------------- data
def _epoch_order(n: int, seed: int, epoch: int, rank: int, world: int) -> torch.Tensor:
    """This rank's sample order for ``epoch``: a seeded permutation, padded and sharded."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**64)  # torch seeds are 64-bit
    perm = torch.randperm(n, generator=g)
    if world > 1:
        per_rank = math.ceil(n / world)
        perm = torch.cat([perm, perm[: per_rank * world - n]])
        perm = perm[rank::world]
    return perm


def iterate_batches(dataset: Dataset, order: torch.Tensor, batch_size: int) -> Iterator[Sequence[torch.Tensor]]:
    """Batches of ``dataset`` in ``order``; a TensorDataset is sliced without a DataLoader."""
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        if isinstance(dataset, TensorDataset):
            yield tuple(t[idx] for t in dataset.tensors)
        else:
            yield default_collate([dataset[int(j)] for j in idx])


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 512,
             device: torch.device | None = None) -> dict[str, float]:
    """Accuracy (fraction) and mean cross-entropy of ``model`` on ``dataset``."""
    was_training = model.training
    model.eval()
    device = device or model_device(model)
    correct, loss, n = 0, 0.0, 0
    try:
        for x, y in iterate_batches(dataset, torch.arange(len(dataset)), batch_size):
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss += float(nn.functional.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            n += len(y)
    finally:
        model.train(was_training)
    return {"accuracy": correct / max(n, 1), "loss": loss / max(n, 1)}


def model_device(model: nn.Module) -> torch.device:
    """Where ``model`` lives: its first parameter's device, else its first buffer's, else the CPU.

    Runtime modules loaded from a ``.tsk`` file hold their compressed weights as buffers
    (or plain arrays) and may have no parameters at all.
    """
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if first is None else first.device


# ---------------------------------------------------------------- checkpoints
def _fingerprint(cfg: TrainConfig, seed: int, n_train: int) -> str:
    blob = json.dumps({"cfg": cfg.model_dump(), "seed": seed, "n": n_train}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically: a reader sees the old file or the new one, never half, and an
    interrupted write leaves no temporary (:func:`torchshrink.files.atomic_write`)."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint safely (no pickle code execution); errors name the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        raise CheckpointError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a torchshrink checkpoint ({CHECKPOINT_FORMAT})")
    return state


# ---------------------------------------------------------------- the loop
@dataclass
class _Run:
    """The state one :func:`fit` call trains with, built once by :func:`_setup`."""

    model: nn.Module
    net: nn.Module  # ``model``, or its DistributedDataParallel wrapper
    cfg: TrainConfig
    ctx: TrainContext
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    loss_fn: nn.Module
    callbacks: Sequence[Callback]
    device: torch.device
    rank: int
    world: int
    seed: int
    n_train: int
    fingerprint: str
    ckpt_path: Path | None
    start_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def fit(
    model: nn.Module,
    train_data: Dataset,
    config: TrainConfig | None = None,
    *,
    test_data: Dataset | None = None,
    callbacks: Sequence[Callback] = (),
    checkpoint: str | Path | None = None,
    resume: bool = False,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device | None = None,
    log: Callable[[str], None] | None = None,
    description: str = "train",
) -> list[dict[str, float]]:
    """Train ``model`` in place; returns the per-epoch history.

    Args:
        config: hyper-parameters (defaults: :class:`TrainConfig`).
        test_data: evaluated after every epoch (accuracy in the history).
        callbacks: technique hooks (see :class:`Callback`).
        checkpoint: file written atomically after every epoch; with ``resume=True`` the
            run continues from it (a finished run returns its history at once).
        seed: seeds the global RNG (dropout) and each epoch's data order.
    """
    cfg = config or TrainConfig()
    run = _setup(model, train_data, cfg, callbacks, checkpoint, resume, seed, device)
    say = log if log is not None else (lambda s: None)
    bar = _progress(progress and run.rank == 0)
    with bar:
        task = bar.add_task(description, total=run.ctx.steps_per_epoch * (cfg.epochs - run.start_epoch),
                            loss=float("nan"))
        for epoch in range(run.start_epoch, cfg.epochs):
            row = _train_epoch(run, epoch, train_data, test_data, bar, task)
            run.history.append(row)
            say(_format_row(description, row, cfg.epochs))
            if run.ckpt_path is not None and run.rank == 0:
                save_checkpoint(run.ckpt_path, _checkpoint_state(run, epoch + 1))
            if run.world > 1:
                dist.barrier()
    for cb in callbacks:
        cb.on_train_end(run.ctx)
    return run.history


def _setup(model: nn.Module, train_data: Dataset, cfg: TrainConfig, callbacks: Sequence[Callback],
           checkpoint: str | Path | None, resume: bool, seed: int, device: str | torch.device | None) -> _Run:
    """Device, process group, seeding, ``on_train_begin``, optimizer, resume, DDP wrap (in that order)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    rank, world = init_distributed(device)
    n_train = len(train_data)
    per_rank = math.ceil(n_train / world)
    ctx = TrainContext(model=model, config=cfg, steps_per_epoch=max(1, math.ceil(per_rank / cfg.batch_size)),
                       rank=rank, world_size=world)
    torch.manual_seed(seed)
    model.to(device)
    for cb in callbacks:  # before the optimizer: callbacks may add parameters (masks)
        cb.on_train_begin(ctx)
    optimizer = make_optimizer(model, cfg)
    ctx.optimizer = optimizer
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg, ctx.steps_per_epoch))
    run = _Run(model=model, net=model, cfg=cfg, ctx=ctx, optimizer=optimizer, scheduler=scheduler,
               loss_fn=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), callbacks=callbacks,
               device=device, rank=rank, world=world, seed=seed, n_train=n_train,
               fingerprint=_fingerprint(cfg, seed, n_train),
               ckpt_path=Path(checkpoint) if checkpoint is not None else None)
    if resume and run.ckpt_path is not None and run.ckpt_path.exists():
        _restore_checkpoint(run, run.ckpt_path)
    if world > 1:
        run.net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return run


def _train_epoch(run: _Run, epoch: int, train_data: Dataset, test_data: Dataset | None,
                 bar: Progress, task: TaskID) -> dict[str, float]:
    """One epoch over this rank's shard, with its callbacks; returns the history row."""
    ctx = run.ctx
    ctx.epoch = epoch
    for cb in run.callbacks:
        cb.on_epoch_begin(ctx)
    run.model.train()
    t0, total_loss, seen, correct = time.perf_counter(), 0.0, 0, 0
    order = _epoch_order(run.n_train, run.seed, epoch, run.rank, run.world)
    for x, y in iterate_batches(train_data, order, run.cfg.batch_size):
        loss_value, n, n_correct = _train_step(run, epoch, x, y)
        total_loss += loss_value * n
        seen += n
        correct += n_correct
        bar.update(task, advance=1, loss=total_loss / seen)
    row = {"epoch": epoch + 1, "train_loss": total_loss / max(seen, 1),
           "train_accuracy": correct / max(seen, 1), "lr": run.optimizer.param_groups[0]["lr"],
           "seconds": time.perf_counter() - t0}
    if test_data is not None:
        row["test_accuracy"] = evaluate(run.model, test_data, device=run.device)["accuracy"]
    ctx.logs = row
    for cb in run.callbacks:
        cb.on_epoch_end(ctx)
    return row


def _train_step(run: _Run, epoch: int, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int, int]:
    """One optimizer step on a batch; returns (loss, batch size, correct predictions)."""
    ctx, callbacks = run.ctx, run.callbacks
    x, y = x.to(run.device), y.to(run.device)
    for cb in callbacks:
        cb.on_step_begin(ctx)
    out = run.net(x)
    loss = run.loss_fn(out, y)
    for cb in callbacks:
        extra = cb.loss(ctx)
        if extra is not None:
            loss = loss + extra
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        raise TrainingError(
            f"training diverged at epoch {epoch + 1}, step {ctx.step}: loss is {loss_value}; "
            "lower the learning rate")
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for cb in callbacks:
        cb.after_backward(ctx)
    if run.cfg.grad_clip is not None:
        nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    ctx.step += 1
    for cb in callbacks:
        cb.on_step_end(ctx)
    return loss_value, len(y), int((out.argmax(1) == y).sum())


def _checkpoint_state(run: _Run, epoch: int) -> dict[str, Any]:
    """What a checkpoint holds after ``epoch`` epochs (format ``CHECKPOINT_FORMAT``)."""
    return {
        "format": CHECKPOINT_FORMAT, "fingerprint": run.fingerprint, "epoch": epoch, "step": run.ctx.step,
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "callbacks": [cb.state_dict() for cb in run.callbacks],
        "rng": torch.get_rng_state(), "history": run.history,
        "cuda_rng": torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None,
    }


def _restore_checkpoint(run: _Run, path: Path) -> None:
    """Load the checkpoint at ``path`` into ``run`` after checking that it belongs to this run."""
    state = load_checkpoint(path)
    if state["fingerprint"] != run.fingerprint:
        raise CheckpointError(
            f"checkpoint {path} was written by a run with other settings (seed, data or config); "
            "start without --resume or use another output directory")
    try:
        run.model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit the model: {str(e).splitlines()[0]}") from None
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if len(state["callbacks"]) != len(run.callbacks):
        raise CheckpointError(f"checkpoint {path} was written with {len(state['callbacks'])} callbacks, "
                              f"this run has {len(run.callbacks)}")
    for cb, cb_state in zip(run.callbacks, state["callbacks"]):
        cb.load_state_dict(cb_state)
    torch.set_rng_state(state["rng"])
    if run.device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], run.device)
    run.start_epoch, run.ctx.step, run.history = state["epoch"], state["step"], list(state["history"])


def _format_row(desc: str, row: dict[str, float], epochs: int) -> str:
    """The log line of one epoch's history row."""
    test = f"  test acc {row['test_accuracy']:.4f}" if "test_accuracy" in row else ""
    return (f"{desc} epoch {int(row['epoch'])}/{epochs}  loss {row['train_loss']:.4f}  "
            f"train acc {row['train_accuracy']:.4f}{test}  lr {row['lr']:.3g}  {row['seconds']:.1f}s")


def _progress(enabled: bool) -> Progress:
    """A rich progress bar (transient; a no-op unless ``enabled``)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(),
                    transient=True, disable=not enabled)
