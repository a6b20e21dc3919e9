"""The tasks a host's output is scored against: next-token scoring and the logits it reads."""

import pytest
import torch

from esper.data.sequences import IGNORE
from esper.data.splits import load_data
from esper.simic.tasks import Classification, NextToken, logits_of, task_for


def test_next_token_scoring_counts_only_scored_positions():
    z = torch.full((1, 3, 5), -10.0)
    z[0, 0, 1] = z[0, 1, 2] = z[0, 2, 4] = 10.0  # predicts 1, 2, 4
    y = torch.tensor([[1, IGNORE, 3]])
    score = NextToken().score(z, y)
    assert score.count == 2 and int(score.correct) == 1
    assert score.loss == pytest.approx(torch.nn.functional.cross_entropy(z[0, [0, 2]], y[0, [0, 2]]).item())
    assert isinstance(task_for(y), NextToken) and isinstance(task_for(torch.tensor([1, 2])), Classification)


def test_logits_come_as_a_tensor_or_as_an_output_with_logits():
    class Output(dict):
        def __init__(self, logits):
            super().__init__(logits=logits)
            self.logits = logits

    z = torch.randn(2, 4)
    assert logits_of(z) is z and logits_of(Output(z)) is z
    with pytest.raises(ValueError, match="needs a logits tensor"):
        logits_of((z,))
    data = load_data("seq-synthetic", context=8, limit=20)
    with pytest.raises(ValueError, match=r"needs \(batch, 8, vocabulary\) logits with a vocabulary of at least the data's 64"):
        NextToken().check_output(torch.randn(2, 8, 10), data.train.x[:2], data)
    NextToken().check_output(torch.randn(2, 8, 256), data.train.x[:2], data)  # a bigger vocabulary covers the data's
