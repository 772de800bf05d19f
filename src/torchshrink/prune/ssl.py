"""Structured Sparsity Learning (Wen et al. 2016, "Learning Structured Sparsity in Deep Neural Networks").

Training minimizes ``E(W) = E_D(W) + λ_g Σ_g ||W_g||₂`` (eq. 1-2), the group lasso: the
sum over groups of each group's L2 norm **with its square root** (``||w||₂ = sqrt(Σ w²)``;
a known port bug uses the square, which is plain weight decay and zeroes nothing).
Groups (§3.2-3.3):

- **filter/channel** (``lambda_channel``): one group per removable channel of the
  dependency graph (:mod:`torchshrink.surgery.graph`): the producers' filters ``W_l[n,:,:,:]``,
  the batch-norm entries, and the next layers' kernels ``W_{l+1}[:,n,:,:]`` -- exactly
  the parameters channel surgery removes (Wen's filter-wise and channel-wise groups of
  the same feature map, joined);
- **filter shape** (``lambda_shape``): ``W_l[:, c, h, w]`` per conv (zeroed columns of
  the im2col matrix; reported, not removed: it needs a sparse GEMM);
- **depth** (``lambda_depth``): every parameter of a residual block's branch, so a block
  can go whole; its parameter-free shortcut is kept (``RemoveBlock``).

**Proximal step** (``proximal: true``, the default). A (sub)gradient of ``λ||W_g||₂``
shrinks a group by ``lr·λ`` per step and then overshoots zero, so groups hover at a small
norm and are never exactly zero. Instead the penalty is left out of the loss and, after
each optimizer step on ``E_D``, every group takes the proximal operator of
``lr·λ||·||₂`` (block soft thresholding; Parikh & Boyd 2014, "Proximal Algorithms",
§6.5.4)::

    W_g ← W_g · max(0, 1 − lr·λ_g / ||W_g||₂)

which sets a group exactly to zero once its norm is at most ``lr·λ_g``. Overlapping
groups (a depth group holds its block's channel and shape groups) take their operators
one type after the other: depth, then channel, then filter shape; within a type all norms
are taken before any group is scaled.

After the regularized training, groups whose norm is under ``epsilon`` are zeroed, then
removed by surgery (``RemoveBlock`` + ``PruneChannels``): with the groups exactly zero
the removal does not change the outputs; the stage then fine-tunes without the penalty.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from ..core.params import Interval, check
from ..core.select import unwrap
from ..core.technique import LayerStage, Step, Technique
from ..errors import ModelError
from ..surgery.graph import CONV, ChannelGroup, DependencyGraph, trace, warn_unhandled
from ..surgery.plan import apply_plan
from ..surgery.prune_channels import RemoveBlock, prune_channels_op
from ..train import Callback, TrainConfig, TrainContext
from .filters import checked_apply, example_input, record_structure, selected_groups

LAMBDA = Interval(float, 0.0, None)
EPSILON = Interval(float, 0.0, None)


@dataclass
class _Slice:
    """Positions ``pos`` of ``owner.<name>`` along ``axis`` belong to atoms ``atom`` (indices into the groups)."""

    owner: nn.Module
    name: str
    axis: int
    pos: torch.Tensor
    atom: torch.Tensor

    def tensor(self) -> torch.Tensor:
        return getattr(self.owner, self.name)

    def sq(self) -> torch.Tensor:
        """Squared norm of each listed position's slice."""
        t = self.tensor()
        dims = [d for d in range(t.ndim) if d != self.axis]
        per = t.pow(2).sum(dim=dims) if dims else t.pow(2)
        return per.index_select(0, self.pos)


def _axis(layer: nn.Module, role: str) -> int:
    transposed = isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
    if role == "in":
        return 0 if transposed else 1
    if isinstance(layer, nn.Embedding):
        return 1
    return 1 if transposed else 0


def channel_slices(model: nn.Module, graph: DependencyGraph, groups: Sequence[ChannelGroup]) -> tuple[list[_Slice], int]:
    """Every parameter slice of the atoms of ``groups``, and the number of atoms."""
    index = {a: k for k, a in enumerate(a for g in groups for a in g.atoms)}
    out: list[_Slice] = []
    for u in graph.uses:
        atoms = [index.get(graph.root(int(lab)), -1) if lab >= 0 else -1 for lab in u.labels]
        pos = [i for i, a in enumerate(atoms) if a >= 0]
        if not pos:
            continue
        atom = torch.tensor([atoms[i] for i in pos])
        posn = torch.tensor(pos)
        if u.role == "param":
            owner_name, _, attr = u.target.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            out.append(_Slice(owner, attr, u.axis, posn, atom))
            continue
        layer = model.get_submodule(u.target)
        names = ["weight"] if u.role == "in" else ["weight", "bias"]
        for name in names:
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor) and t.ndim >= 1:
                out.append(_Slice(layer, name, _axis(layer, u.role) if name == "weight" else 0, posn, atom))
    return out, len(index)


def _depth_params(model: nn.Module, block: str, shortcut: str) -> list[nn.Parameter]:
    b = model.get_submodule(block)
    skip = {id(p) for p in b.get_submodule(shortcut).parameters()} if hasattr(b, shortcut) else set()
    return [p for p in b.parameters() if id(p) not in skip]


def depth_blocks(model: nn.Module, patterns: Sequence[str], shortcut: str) -> list[str]:
    """Modules matching ``patterns`` that have a parameter-free ``shortcut`` child (removable whole).

    Matching modules without such a child (the convs inside a block, blocks with a
    projection shortcut) are skipped; a pattern that matches no block at all is an error.
    """
    out: list[str] = []
    for pat in patterns:
        hits = [n for n, m in model.named_modules() if n and fnmatch.fnmatchcase(n, pat)
                and isinstance(getattr(m, shortcut, None), nn.Module)]
        if not hits:
            raise ModelError(f"depth_blocks pattern {pat!r} matches no module with a {shortcut!r} child")
        out += [n for n in hits if n not in out and not any(True for _ in getattr(
            model.get_submodule(n), shortcut).parameters())]
    return out


class GroupLasso(Callback):
    """``Σ λ_g ||W_g||₂`` over channel, filter-shape and depth groups: added to the training loss
    (``proximal=False``) or applied as its proximal operator after every optimizer step."""

    def __init__(self, model: nn.Module, graph: DependencyGraph, groups: Sequence[ChannelGroup], *,
                 lambda_channel: float, lambda_shape: float = 0.0, lambda_depth: float = 0.0,
                 blocks: Sequence[str] = (), shortcut: str = "shortcut", proximal: bool = False) -> None:
        self.model = unwrap(model)
        self.lambdas = (check(lambda_channel, "lambda_channel", "ssl", LAMBDA),
                        check(lambda_shape, "lambda_shape", "ssl", LAMBDA),
                        check(lambda_depth, "lambda_depth", "ssl", LAMBDA))
        self.slices, self.n_atoms = channel_slices(self.model, graph, groups)
        self.graph, self.groups = graph, list(groups)
        self.convs = [m for m in self.model.modules() if isinstance(m, CONV) and m.groups == 1]
        self.blocks, self.shortcut = list(blocks), shortcut
        self.proximal, self.lr = proximal, 0.0

    def channel_norms(self) -> torch.Tensor:
        """``||W_g||₂`` of every channel group (atom), in group order."""
        p = next(self.model.parameters())
        sq = torch.zeros(self.n_atoms, device=p.device, dtype=p.dtype)
        for s in self.slices:
            sq = sq.index_add(0, s.atom.to(p.device), s.sq())
        return sq.clamp_min(1e-30).sqrt()

    def depth_norms(self) -> torch.Tensor:
        if not self.blocks:
            return torch.zeros(0)
        return torch.stack([torch.cat([q.reshape(-1) for q in _depth_params(self.model, b, self.shortcut)])
                            .pow(2).sum().clamp_min(1e-30).sqrt() for b in self.blocks])

    def shape_norms(self) -> torch.Tensor:
        terms = [m.weight.pow(2).sum(0).clamp_min(1e-30).sqrt().reshape(-1) for m in self.convs]
        return torch.cat(terms) if terms else torch.zeros(0)

    def penalty(self) -> torch.Tensor:
        lc, ls, ld = self.lambdas
        total = lc * self.channel_norms().sum()
        if ls:
            total = total + ls * self.shape_norms().sum()
        if ld and self.blocks:
            total = total + ld * self.depth_norms().sum()
        return total

    def loss(self, ctx: TrainContext) -> torch.Tensor | None:
        return None if self.proximal else self.penalty()

    def after_backward(self, ctx: TrainContext) -> None:
        if ctx.optimizer is not None:
            self.lr = float(ctx.optimizer.param_groups[0]["lr"])  # the rate of the step about to be taken

    def on_step_end(self, ctx: TrainContext) -> None:
        if self.proximal:
            self.prox(self.lr)

    @torch.no_grad()
    def prox(self, step: float) -> None:
        """One proximal step of ``step·Σ λ_g ||W_g||₂``: ``W_g ← W_g · max(0, 1 − step·λ_g/||W_g||₂)``."""
        lc, ls, ld = self.lambdas
        if ld and self.blocks:
            for b, norm in zip(self.blocks, self.depth_norms().tolist()):
                factor = max(0.0, 1.0 - step * ld / max(norm, 1e-30))
                if factor != 1.0:
                    for q in _depth_params(self.model, b, self.shortcut):
                        q.mul_(factor)
        if lc and self.n_atoms:
            factor = (1.0 - step * lc / self.channel_norms()).clamp_min(0.0)
            for s in self.slices:
                t = s.tensor()
                scale = torch.ones(t.shape[s.axis], device=t.device, dtype=t.dtype)
                scale[s.pos.to(t.device)] = factor[s.atom.to(factor.device)].to(t.dtype)
                t.mul_(scale.reshape([-1 if d == s.axis else 1 for d in range(t.ndim)]))
        if ls:
            for m in self.convs:
                norm = m.weight.pow(2).sum(0, keepdim=True).clamp_min(1e-30).sqrt()
                m.weight.mul_((1.0 - step * ls / norm).clamp_min(0.0))

    @torch.no_grad()
    def zero_below(self, epsilon: float, epsilon_depth: float | None = None) -> dict[str, Any]:
        """Zero every group whose norm is ``<= epsilon`` (depth groups: ``<= epsilon_depth``, by
        default ``epsilon``); return the counts and the removable parts."""
        check(epsilon, "epsilon", "ssl", EPSILON)
        eps_depth = epsilon if epsilon_depth is None else check(epsilon_depth, "epsilon_depth", "ssl", EPSILON)
        depth = dict(zip(self.blocks, self.depth_norms().tolist()))
        gone_blocks = [b for b, n in depth.items() if n <= eps_depth]
        for b in gone_blocks:
            for q in _depth_params(self.model, b, self.shortcut):
                q.zero_()
        norms = self.channel_norms()
        dead = torch.nonzero(norms <= epsilon).flatten()
        for s in self.slices:
            hit = torch.isin(s.atom.to(dead.device), dead)
            if hit.any():
                s.tensor().index_fill_(s.axis, s.pos[hit.cpu()].to(s.tensor().device), 0.0)
        shapes = self.shape_norms()
        for m in self.convs:
            col = m.weight.pow(2).sum(0).sqrt() <= epsilon
            m.weight.mul_(~col)
        return {"blocks_removed": gone_blocks, "block_norms": {b: round(n, 4) for b, n in depth.items()},
                "blocks": len(self.blocks), "channel_groups_zeroed": int(dead.numel()),
                "channel_groups": self.n_atoms, "shape_groups_zeroed": int((shapes <= epsilon).sum()),
                "shape_groups": int(shapes.numel())}


def conv_filters(model: nn.Module) -> int:
    """Filters (output channels) over every convolution of ``model``."""
    return sum(m.out_channels for m in model.modules() if isinstance(m, CONV))


def _zero_atoms(model: nn.Module, graph: DependencyGraph, groups: Sequence[ChannelGroup]) -> list[int]:
    """Atoms of ``groups`` whose parameters are all exactly zero (at least one atom kept per group/block)."""
    slices, _ = channel_slices(model, graph, groups)
    sq = torch.zeros(sum(g.size for g in groups))
    for s in slices:
        sq = sq.index_add(0, s.atom, s.sq().detach().cpu().float())
    out, start = [], 0
    for g in groups:
        z = (sq[start:start + g.size] == 0).numpy()
        per = g.size // g.blocks
        counts = [int(z[b * per:(b + 1) * per].sum()) for b in range(g.blocks)]
        k = min(min(counts), per - 1)
        for b in range(g.blocks):
            idx = [i for i in range(b * per, (b + 1) * per) if z[i]][:k]
            out += [g.atoms[i] for i in idx]
        start += g.size
    return out


# ---------------------------------------------------------------- the recipe stage
class SSLSpec(LayerStage):
    """Wen et al. 2016: train with group lasso, zero the groups under epsilon, remove them, fine-tune."""

    technique: Literal["ssl"]
    train: TrainConfig | None = Field(None, description="the regularized training; default: the baseline's config")
    lambda_channel: float = LAMBDA.field(1e-3, description="λ of the filter/channel groups")
    lambda_shape: float = LAMBDA.field(0.0, description="λ of the filter-shape groups (zeroed, not removed)")
    lambda_depth: float = LAMBDA.field(0.0, description="λ of the depth groups (whole residual branches)")
    depth_blocks: list[str] = Field(default_factory=list, description="residual block name patterns, e.g. layer*.*")
    shortcut: str = Field("shortcut", description="the child of a block that is kept when the block is removed")
    epsilon: float = EPSILON.field(1e-3, description="groups with ||W_g||₂ <= epsilon are zeroed and removed")
    epsilon_depth: float | None = Field(None, ge=0, description="epsilon of the depth groups; default: epsilon")
    proximal: bool = Field(True, description="apply the group lasso as its proximal step after each optimizer "
                                             "step (groups reach exactly zero) instead of adding it to the loss")


def _apply(ctx: Any, spec: SSLSpec, finetune: TrainConfig) -> Step:
    model, shape = ctx.model, ctx.data.input_shape
    graph = trace(model, example_input(model, shape))
    warn_unhandled(graph)
    groups = selected_groups(graph, spec.layers, spec.exclude)
    blocks = depth_blocks(model, spec.depth_blocks, spec.shortcut) if spec.depth_blocks else []
    reg = GroupLasso(model, graph, groups, lambda_channel=spec.lambda_channel, lambda_shape=spec.lambda_shape,
                     lambda_depth=spec.lambda_depth, blocks=blocks, shortcut=spec.shortcut, proximal=spec.proximal)
    cfg = spec.train if spec.train is not None else ctx.baseline_config
    ctx.history.append({"stage": f"{ctx.tag}-regularized", "technique": "ssl",
                        "epochs": ctx.fit(model, cfg, [reg], f"{ctx.tag}-regularized")})
    summary = reg.zero_below(spec.epsilon, spec.epsilon_depth)
    plan: list[Any] = [RemoveBlock(block=b, shortcut=spec.shortcut) for b in summary["blocks_removed"]]
    slim = apply_plan(model, plan) if plan else model
    g2 = trace(slim, example_input(slim, shape))
    kept = [g for g in g2.groups if all(not any(p.startswith(b + ".") for b in summary["blocks_removed"])
                                        for p in g.producers)]
    sel = [g for g in kept if g.producers[0] in {p for g0 in groups for p in g0.producers}]
    op = prune_channels_op(g2, _zero_atoms(slim, g2, sel))
    after = checked_apply(slim, op, shape) if op.cuts else slim
    plan += [op] if op.cuts else []
    record_structure(ctx, model, after, graph.warnings)
    summary["filters"] = [conv_filters(model), conv_filters(after)]  # before, after (removed blocks included)
    ctx.extra["structured"]["stages"][-1]["ssl"] = summary
    return Step(plan=plan)


TECHNIQUE = Technique("ssl", SSLSpec, _apply)
__all__ = ["GroupLasso", "SSLSpec", "TECHNIQUE", "channel_slices", "depth_blocks"]
