"""Tasks: what a host's output is scored against. The data decides which (`task_for`).

For a batch (out, y), with logits z = out, or out.logits for a HuggingFace output:

    classification  z (B, C), y (B,) class ids
                    loss = mean_b CE(z_b, y_b);  correct = #{b : argmax z_b = y_b};  count = B
    next_token      z (B, T, V), y (B, T) the token after each position, IGNORE where
                    a position is not scored (the synthetic task scores only answers)
                    loss = mean over scored (b, t) of CE(z_bt, y_bt)
                    correct = #{scored (b, t) : argmax z_bt = y_bt};  count = #scored

Accuracy (correct / count) is what the reward, the contribution probe and the
observations read for both, so one policy runs on CNN and transformer hosts alike; the
loss is reported beside it (as perplexity or bits per character for text).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from esper.data.sequences import IGNORE


def logits_of(out) -> torch.Tensor:
    """The logits a host returned: the tensor itself, or the `.logits` of an output object."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise ValueError(f"the host returned {type(out).__name__}: esper needs a logits tensor, or an object with .logits")


@dataclass(frozen=True)
class BatchScore:
    loss: torch.Tensor  # mean over the scored predictions, differentiable
    correct: torch.Tensor  # 0-dim count
    count: int | torch.Tensor  # scored predictions (a 0-dim tensor where it depends on the data: no read)


class Classification:
    """One label per example."""

    name = "classification"

    def score(self, out, y: torch.Tensor) -> BatchScore:
        z = logits_of(out)
        return BatchScore(F.cross_entropy(z, y), (z.detach().argmax(-1) == y).sum(), y.shape[0])

    def check_output(self, out, x: torch.Tensor, data) -> None:
        """Raise ValueError unless the host gives one logit per class for each example of `x`."""
        z = logits_of(out)
        if z.dim() != 2 or z.shape != (x.shape[0], data.num_classes):
            raise ValueError(
                f"the host outputs {tuple(z.shape)} for a batch, but the data has {data.num_classes} "
                f"classes: a classifier with {data.num_classes} outputs is needed"
            )


class NextToken:
    """A token to predict after each position of a sequence."""

    name = "next_token"

    def score(self, out, y: torch.Tensor) -> BatchScore:
        z = logits_of(out)
        flat_z, flat_y = z.flatten(0, 1), y.flatten()
        scored = flat_y != IGNORE
        correct = ((flat_z.detach().argmax(-1) == flat_y) & scored).sum()
        return BatchScore(F.cross_entropy(flat_z, flat_y, ignore_index=IGNORE), correct, scored.sum())

    def check_output(self, out, x: torch.Tensor, data) -> None:
        """Raise ValueError unless the host gives, at every position of `x`, logits over at least the data's tokens."""
        z = logits_of(out)
        length = x.shape[1]
        if z.dim() != 3 or z.shape[:2] != x.shape[:2] or z.shape[2] < data.num_classes:
            raise ValueError(
                f"the host outputs {tuple(z.shape)} for a batch of {length}-token sequences, but "
                f"next-token prediction needs (batch, {length}, vocabulary) logits with a vocabulary "
                f"of at least the data's {data.num_classes} tokens"
            )


def read_once(values) -> list[float]:
    """Values that are device tensors (0-dim) or Python numbers, as floats, with one read of
    the device for all the tensors: counts stay Python ints where the task knows them."""
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    read = iter(torch.stack([t.double() for t in tensors]).tolist() if tensors else ())
    return [next(read) if isinstance(v, torch.Tensor) else float(v) for v in values]


def task_for(y: torch.Tensor) -> Classification | NextToken:
    """The task of targets `y`: (N,) class ids, or (N, T) next tokens."""
    return NextToken() if y.dim() == 2 else Classification()
