"""Contrastive pieces of the X-VLM objectives: gathering across processes, the symmetric InfoNCE
loss with duplicate-aware targets, and hard-negative sampling for ITM.

X-VLM (zengyan-97/X-VLM models/xvlm.py, ``XVLMBase.get_contrastive_loss`` and
``get_matching_loss``) is the model: pairs whose text keys are equal are positives of each
other (X-VLM's ``idx``), and ITM negatives are drawn from the softmax of the ITC similarities,
never from a pair with the same key.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = ["gather_with_grad", "itc_loss", "sample_hard_negatives"]


def world_size_and_rank():
    """(world size, rank), (1, 0) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _all_gather_rows(tensor, counts):
    """Rows of every process concatenated in rank order (process r holds ``counts[r]`` rows)."""
    padded = tensor.new_zeros((max(counts),) + tuple(tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, counts, strict=True)])


class _GatherWithGrad(torch.autograd.Function):
    """Forward: :func:`_all_gather_rows`. Backward: every process's loss reads every process's
    rows, so the gradients of all processes are summed and the local slice is returned."""

    @staticmethod
    def forward(ctx, tensor, counts, start):
        ctx.start, ctx.count = start, tensor.shape[0]
        return _all_gather_rows(tensor, counts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.start : ctx.start + ctx.count], None, None


def gather_with_grad(*tensors):
    """Concatenate each tensor's rows over all processes (rank order); gradients reach the local
    rows (summed over the processes' losses). Every process must call it, also with no rows.

    Args:
        tensors: (n, ...) tensors with the same n here; n may differ between processes.
    Returns:
        (tuple of gathered (N, ...) tensors, index of this process's first row in them).
    """
    world, rank = world_size_and_rank()
    if world == 1:
        return tensors, 0
    count = torch.tensor([tensors[0].shape[0]], device=tensors[0].device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts = [int(c.item()) for c in counts]
    start = sum(counts[:rank])
    gathered = tuple(
        _GatherWithGrad.apply(t, counts, start) if t.requires_grad else _all_gather_rows(t, counts)
        for t in tensors
    )
    return gathered, start


def itc_loss(visual, text, keys, temperature):
    """Symmetric InfoNCE of n local (visual, text) pairs against the pairs of all processes.

    Pair j is a positive of pair i when ``keys[j] == keys[i]`` (the same text: a duplicated
    caption, two boxes of one phrase); the target distribution spreads evenly over the
    positives (X-VLM's ``idx`` targets).

    Args:
        visual, text (Tensor): (n, E) L2-normalised embeddings; row i of both is pair i.
        keys (Tensor): (n,) int64 text identities.
        temperature (Tensor): scalar.
    Returns:
        Tensor: scalar, ``world / N * sum over local pairs of (CE_i2t + CE_t2i) / 2`` with N the
        pairs of all processes: the mean over processes is the loss of one process holding the
        whole batch, and so is the gradient after DDP's averaging.
    """
    world, _ = world_size_and_rank()
    (visual_all, text_all, keys_all), _ = gather_with_grad(visual, text, keys)
    total = visual_all.shape[0]
    if total == 0:  # keeps the graph (and DDP's gradient bookkeeping) connected
        return (visual.sum() + text.sum()) * 0.0 + temperature * 0.0
    positives = (keys[:, None] == keys_all[None, :]).to(visual.dtype)
    targets = positives / positives.sum(dim=1, keepdim=True)
    i2t = visual @ text_all.t() / temperature
    t2i = text @ visual_all.t() / temperature
    loss = -(targets * F.log_softmax(i2t, dim=1)).sum(1) - (
        targets * F.log_softmax(t2i, dim=1)
    ).sum(1)
    return loss.sum() / 2.0 * world / total


@torch.no_grad()
def sample_hard_negatives(similarity, row_keys, col_keys, generator=None):
    """One hard negative column per row, drawn with probability softmax(similarity) (X-VLM).

    Columns with the row's key (the positive itself and its duplicates) are never drawn.

    Args:
        similarity (Tensor): (R, C) logits (similarity / temperature).
        row_keys, col_keys (Tensor): (R,) and (C,) int64 text identities.
        generator (torch.Generator | None): randomness source.
    Returns:
        LongTensor (R,): the drawn column, -1 for a row whose every column shares its key.
    """
    weights = F.softmax(similarity.float(), dim=1) + 1e-5
    weights[row_keys[:, None] == col_keys[None, :]] = 0.0
    out = torch.full((similarity.shape[0],), -1, dtype=torch.long, device=similarity.device)
    valid = weights.sum(dim=1) > 0
    if valid.any():
        drawn = torch.multinomial(weights[valid], 1, generator=generator).squeeze(1)
        out[valid] = drawn
    return out
