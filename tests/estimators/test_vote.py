"""The cluster lookup of predict: a weighted vote of the most similar prototypes."""

import numpy as np
import pytest
import torch

from skcueco.nn import vote as vote_module
from skcueco.nn.vote import prototype_vote, vote_clusters


def _unit(A):
    return torch.nn.functional.normalize(torch.as_tensor(A, dtype=torch.float32), dim=1)


def test_one_vote_is_the_most_similar_prototype():
    g = torch.Generator().manual_seed(0)
    z, P = _unit(torch.randn(50, 4, generator=g)), _unit(torch.randn(12, 4, generator=g))
    owners = torch.arange(12) % 3
    assert torch.equal(prototype_vote(z, P, owners, 3, 1), owners[(z @ P.T).argmax(1)])


def test_several_close_prototypes_outvote_the_single_nearest():
    # the nearest prototype belongs to cluster 0, the next four, nearly as close, to 1
    z = _unit([[1.0, 0.0]])
    P = _unit([[1.0, 0.0], [1.0, 0.02], [1.0, -0.02], [1.0, 0.03], [1.0, -0.03], [0.0, 1.0]])
    owners = torch.tensor([0, 1, 1, 1, 1, 0])
    assert prototype_vote(z, P, owners, 2, 1).item() == 0
    assert prototype_vote(z, P, owners, 2, 5).item() == 1


def test_far_prototypes_weigh_little():
    # one prototype on the image, four far ones of another cluster: the near one wins
    z = _unit([[1.0, 0.0]])
    P = _unit([[1.0, 0.0], [0.5, 1.0], [0.5, -1.0], [0.4, 1.0], [0.4, -1.0]])
    owners = torch.tensor([0, 1, 1, 1, 1])
    assert prototype_vote(z, P, owners, 2, 5).item() == 0
    # with a soft vote the many far ones win
    assert prototype_vote(z, P, owners, 2, 5, temperature=100.0).item() == 1


def test_more_votes_than_prototypes_use_them_all():
    z = _unit([[1.0, 0.0], [0.0, 1.0]])
    P = _unit([[1.0, 0.1], [0.1, 1.0]])
    owners = torch.tensor([1, 0])
    assert vote_clusters(z, P, owners, 2, 10).tolist() == [1, 0]


def test_a_tie_goes_to_the_lower_cluster():
    z = _unit([[1.0, 0.0]])
    P = _unit([[1.0, 0.1], [1.0, -0.1]])
    assert prototype_vote(z, P, torch.tensor([1, 0]), 2, 2).item() == 0


def test_blocks_give_the_same_labels(monkeypatch):
    g = torch.Generator().manual_seed(1)
    z, P = _unit(torch.randn(103, 8, generator=g)), _unit(torch.randn(40, 8, generator=g))
    owners = torch.randint(0, 4, (40,), generator=g)
    whole = vote_clusters(z, P, owners, 4, 10)
    monkeypatch.setattr(vote_module, "VOTE_ROWS", 10)
    assert torch.equal(vote_clusters(z, P, owners, 4, 10), whole)


@pytest.mark.parametrize("n_votes", [1, 10])
def test_the_vote_exports(n_votes):
    class Lookup(torch.nn.Module):
        def __init__(self, P, owners):
            super().__init__()
            self.register_buffer("P", P)
            self.register_buffer("owners", owners)

        def forward(self, z):
            return prototype_vote(z, self.P, self.owners, 3, n_votes)

    g = torch.Generator().manual_seed(2)
    P = _unit(torch.randn(30, 5, generator=g))
    owners = torch.arange(30) % 3
    z = _unit(torch.randn(7, 5, generator=g))
    program = torch.export.export(
        Lookup(P, owners), (z,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    other = _unit(torch.randn(11, 5, generator=g))
    assert torch.equal(program.module()(other), prototype_vote(other, P, owners, 3, n_votes))
    assert np.array_equal(program.module()(z).numpy(), prototype_vote(z, P, owners, 3, n_votes).numpy())
