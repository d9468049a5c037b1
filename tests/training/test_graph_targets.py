"""cluster_targets="graph": the clustering term assigns keys to the graph's clusters.

Fits use 300 digits, batches of 64 and 5 epochs on the CPU (warm-up 1 epoch),
so the targets are read at the start of epochs 1 and 4 (every
``GRAPH_REFRESH_EPOCHS = 3`` epochs).
"""

import copy

import numpy as np
import pytest
import torch
from numpy.testing import assert_array_equal
from sklearn.datasets import load_digits
from sklearn.utils._param_validation import InvalidParameterError

from skcueco import CueCoEmbedder
from skcueco.callbacks import Callback, Checkpoint
from skcueco.nn.centroids import CentroidBank
from skcueco.nn.vote import VOTE_NEIGHBOURS, vote_clusters

PARAMS = dict(
    max_epochs=5, batch_size=64, hidden_dim=64, projection_dim=32, queue_size=128,
    n_clusters=5, cluster_warmup=1, random_state=0, device="cpu",
    cluster_targets="graph",
)


def params(**overrides):
    return {**PARAMS, **overrides}


@pytest.fixture(scope="module")
def X():
    return load_digits().data[:300]


class TargetsSpy(Callback):
    """Records, at each epoch's end, the bank's targets and centroids."""

    def __init__(self):
        self.seen = {}

    def on_epoch_end(self, trainer, epoch, logs):
        bank = trainer.task.model.bank
        if bank.target_prototypes is not None:
            self.seen[epoch] = (bank.target_prototypes.clone(), bank.target_owners.clone())


@pytest.fixture(scope="module")
def graph_fit(X):
    spy = TargetsSpy()
    est = CueCoEmbedder(**params(callbacks=[spy])).fit(X)
    return est, spy


def _unit(A):
    return torch.nn.functional.normalize(torch.as_tensor(A, dtype=torch.float32), dim=1)


def _targets(g, noise=0.05, n=30):
    """``n`` prototypes in 3 tight groups (near e0, e1, e2 of R^4), owned by clusters 0, 1, 2."""
    directions = torch.eye(4)[:3]
    owners = torch.arange(n) % 3
    return _unit(directions[owners] + noise * torch.randn(n, 4, generator=g)), owners


def test_the_bank_assigns_keys_by_the_vote_of_its_targets():
    g = torch.Generator().manual_seed(0)
    bank = CentroidBank(3, 4, n_overclusters=6, balance=0.5, generator=g)
    prototypes, owners = _targets(g)
    # keys in the groups; the centres are set one group off, so that the
    # nearest centre and the vote disagree on every key
    keys = _unit(torch.eye(4)[torch.arange(40) % 3] + 0.05 * torch.randn(40, 4, generator=g))
    bank.initialise(keys)
    centers = torch.eye(4)[[1, 2, 0]]
    overclusters = bank.overclusters.clone()
    bank.set_targets(centers, prototypes, owners)
    assert torch.equal(bank.centroids, centers)
    assigned = bank.assign_main(keys)
    assert_array_equal(assigned, vote_clusters(keys, prototypes, owners, 3, VOTE_NEIGHBOURS))
    assert_array_equal(assigned, torch.arange(40) % 3)
    assert not torch.equal(assigned, bank.assign(keys, centers))
    # the finer set keeps its centroids and its own (balanced) assignment
    assert torch.equal(bank.overclusters, overclusters)
    assert torch.equal(bank.assign(keys, bank.overclusters), bank.assign(keys, overclusters))
    # the online update moves each centroid towards the keys its targets give it
    bank.update(keys)
    for c in range(3):
        mean = keys[assigned == c].mean(0)
        expected = torch.nn.functional.normalize(0.9 * centers[c] + 0.1 * mean, dim=0)
        torch.testing.assert_close(bank.centroids[c], expected)


def test_keys_whose_neighbours_disagree_are_assigned_as_without_targets():
    from skcueco.nn.centroids import TARGET_CONFIDENCE
    from skcueco.nn.vote import vote_tally

    g = torch.Generator().manual_seed(1)
    bank = CentroidBank(3, 4, balance=0.5, generator=g)
    # 5 prototypes a group: a key between two groups has all 10 of theirs as voters
    prototypes, owners = _targets(g, noise=0.005, n=15)
    bank.set_targets(torch.eye(4)[[1, 2, 0]], prototypes, owners)
    # 20 keys inside group 0, 20 halfway between groups 0 and 1
    inside = torch.eye(4)[0] + 0.05 * torch.randn(20, 4, generator=g)
    between = torch.eye(4)[0] + torch.eye(4)[1] + 0.002 * torch.randn(20, 4, generator=g)
    keys = _unit(torch.cat([inside, between]))
    tally = vote_tally(keys, prototypes, owners, 3, VOTE_NEIGHBOURS)
    share = tally.max(1).values / tally.sum(1)
    confident = share >= TARGET_CONFIDENCE
    assert confident[:20].all() and not confident[20:].any()
    assigned = bank.assign_main(keys)
    # the confident keys take the vote, the others the balanced assignment
    # over all keys to the centroids the targets set
    assert_array_equal(assigned[:20], torch.zeros(20, dtype=torch.long))
    assert_array_equal(assigned[20:], bank.assign(keys, bank.centroids)[20:])
    assert not torch.equal(assigned[20:], tally.argmax(1)[20:])


def test_targets_are_read_every_few_epochs_after_the_warm_up(graph_fit, X):
    from skcueco.training.run import GRAPH_REFRESH_EPOCHS

    assert GRAPH_REFRESH_EPOCHS == 3
    est, spy = graph_fit
    # epoch 0 is the warm-up; epochs 1 to 4 train towards the graph's clusters
    assert sorted(spy.seen) == [1, 2, 3, 4]
    for prototypes, owners in spy.seen.values():
        assert prototypes.shape == (300, 32) and owners.shape == (300,)
        np.testing.assert_allclose(prototypes.norm(dim=1), 1, rtol=1e-5)
        assert set(owners.tolist()) <= set(range(5))
    # read at epoch 1, kept through epochs 2 and 3, read again at epoch 4
    # from the key network of that epoch
    for epoch in (2, 3):
        assert torch.equal(spy.seen[epoch][0], spy.seen[1][0])
        assert torch.equal(spy.seen[epoch][1], spy.seen[1][1])
    assert not torch.equal(spy.seen[4][0], spy.seen[1][0])


def test_with_epoch_updates_the_targets_are_read_every_epoch(X):
    # cluster_update="epoch" re-fits the centroids by k-means before every
    # epoch: the targets are read again each time, so that the centroids
    # stay the clusters the vote assigns keys to
    class CentroidsSpy(TargetsSpy):
        def on_epoch_end(self, trainer, epoch, logs):
            super().on_epoch_end(trainer, epoch, logs)
            self.centroids = getattr(self, "centroids", {})
            self.centroids[epoch] = trainer.task.model.bank.centroids.clone()

    spy = CentroidsSpy()
    CueCoEmbedder(**params(cluster_update="epoch", callbacks=[spy])).fit(X)
    assert sorted(spy.seen) == [1, 2, 3, 4]
    for epoch in (2, 3):
        assert not torch.equal(spy.seen[epoch][0], spy.seen[epoch - 1][0])
    # without online updates each centroid stays the mean direction of the
    # prototypes the targets give it, epoch after epoch
    for epoch, (prototypes, owners) in spy.seen.items():
        for c in owners.unique():
            mean = torch.nn.functional.normalize(prototypes[owners == c].mean(0), dim=0)
            torch.testing.assert_close(spy.centroids[epoch][c], mean, atol=1e-5, rtol=0)


def test_the_graph_targets_change_the_training(graph_fit, X):
    est, _ = graph_fit
    plain = CueCoEmbedder(**params(cluster_targets="centroids")).fit(X)
    assert not np.array_equal(est.transform(X), plain.transform(X))
    # without the clustering term the setting has nothing to act on
    moco_graph = CueCoEmbedder(**params(cluster_weight=0.0)).fit(X)
    moco = CueCoEmbedder(**params(cluster_weight=0.0, cluster_targets="centroids")).fit(X)
    assert_array_equal(moco_graph.transform(X), moco.transform(X))


def test_graph_targets_are_reproducible(graph_fit, X):
    est, _ = graph_fit
    again = CueCoEmbedder(**PARAMS).fit(X)
    assert_array_equal(again.transform(X), est.transform(X))
    assert_array_equal(again.predict(X), est.predict(X))


def test_on_a_large_set_only_the_rows_read_are_encoded_each_epoch(X, monkeypatch):
    import skcueco._embedder as embedder
    import skcueco._readout as module
    from skcueco.training import run

    monkeypatch.setattr(module, "READOUT_ROWS", 120)
    encoded, read = [], []
    encode, readout = run.encode, module.readout

    def encode_spy(fn, preprocess, modules, rows, *args, **kwargs):
        encoded.append(np.array(rows))
        return encode(fn, preprocess, modules, rows, *args, **kwargs)

    def readout_spy(projections, centroids, n_neighbors, seed, views=None):
        read.append((projections.shape[0], seed))
        return readout(projections, centroids, n_neighbors, seed, views=views)

    monkeypatch.setattr(run, "encode", encode_spy)
    monkeypatch.setattr(embedder, "readout", readout_spy)
    spy = TargetsSpy()
    est = CueCoEmbedder(**params(callbacks=[spy])).fit(X)
    # epochs 1 and 4 read 120 key projections, the end of fit all 300
    # (of which readout keeps the same 120)
    assert [n for n, _ in read] == [120, 120, 300]
    seed = read[0][1]
    rows = module.readout_rows(300, seed)
    assert rows.shape == (120,) and np.all(np.diff(rows) > 0)
    subsets = [a for a in encoded if a.shape[0] == 120]
    assert len(subsets) == 2
    for subset in subsets:
        assert_array_equal(subset, X[rows])
    # no epoch encodes the whole set: the only full passes are the
    # centroids' k-means after the warm-up and the eval pass after training
    assert sum(a.shape[0] == 300 for a in encoded) == 2
    for prototypes, owners in spy.seen.values():
        assert prototypes.shape == (120, 32) and owners.shape == (120,)
    # predict reads the same subset of the final projections
    assert est.cluster_prototypes_.shape == (120, 32)


def test_resume_with_graph_targets_equals_the_uninterrupted_run(graph_fit, X, tmp_path,
                                                                stop_after):
    est, spy = graph_fit
    CueCoEmbedder(**params(callbacks=[Checkpoint(tmp_path, keep_last=5), stop_after(3)])).fit(X)
    # epoch 3 trains towards the targets read at epoch 1: the checkpoint
    # after epoch 3 carries them
    saved = torch.load(tmp_path / "epoch-0003.pt", weights_only=True)["task"]["graph_targets"]
    assert torch.equal(saved["prototypes"], spy.seen[1][0])
    assert torch.equal(saved["owners"], spy.seen[1][1])
    resumed = CueCoEmbedder(**PARAMS).fit(X, resume_from=tmp_path / "epoch-0003.pt")
    assert_array_equal(resumed.transform(X), est.transform(X))
    assert_array_equal(resumed.cluster_centers_, est.cluster_centers_)
    # the graph shapes the training here, so its size must match the checkpoint's
    with pytest.raises(ValueError, match="cluster_graph=.* in the checkpoint"):
        CueCoEmbedder(**params(cluster_graph=30)).fit(
            X, resume_from=tmp_path / "epoch-0003.pt")


def test_a_state_without_targets_reads_them_when_resumed(X, tmp_path, stop_after):
    # a checkpoint written before the targets were part of the state: the
    # resumed run reads them at its first epoch instead of training without
    CueCoEmbedder(**params(callbacks=[Checkpoint(tmp_path, keep_last=5), stop_after(2)])).fit(X)
    state = torch.load(tmp_path / "epoch-0002.pt", weights_only=True)
    del state["task"]["graph_targets"]
    torch.save(state, tmp_path / "epoch-0002.pt")
    spy = TargetsSpy()
    resumed = CueCoEmbedder(**params(callbacks=[spy])).fit(
        X, resume_from=tmp_path / "epoch-0002.pt")
    assert resumed.n_iter_ == PARAMS["max_epochs"]
    # read at epoch 2 (no targets), kept at 3, read again at 4 as scheduled
    assert sorted(spy.seen) == [2, 3, 4]
    assert torch.equal(spy.seen[3][0], spy.seen[2][0])
    assert not torch.equal(spy.seen[4][0], spy.seen[2][0])


def test_fitted_models_keep_no_graph_targets(graph_fit):
    est, _ = graph_fit
    assert "graph_targets" not in est._trained.train_state["task"]
    # a warm start reads its own targets at its first epoch with the term on
    spy = TargetsSpy()
    warm = copy.deepcopy(est).set_params(warm_start=True, max_epochs=2, callbacks=[spy])
    warm.fit(load_digits().data[:300])
    assert sorted(spy.seen) == [5, 6]
    # read from the warm start's own key network, not the last run's targets
    assert spy.seen[5][0].shape == (300, 32)
    assert torch.equal(spy.seen[6][0], spy.seen[5][0])


def test_without_graph_targets_cluster_graph_may_change_on_resume(X, tmp_path, stop_after):
    base = params(cluster_targets="centroids")
    CueCoEmbedder(**base, callbacks=[Checkpoint(tmp_path, keep_last=5), stop_after(2)]).fit(X)
    # only the read-out after training uses the graph: the run resumes
    resumed = CueCoEmbedder(**base, cluster_graph=30).fit(
        X, resume_from=tmp_path / "epoch-0002.pt")
    assert resumed.n_iter_ == base["max_epochs"]


def test_a_set_too_small_for_the_graph_trains_with_the_centroids(X):
    spy = TargetsSpy()
    # 12 images: no more than cluster_graph + 1, so no graph
    est = CueCoEmbedder(**params(batch_size=4, n_clusters=3, callbacks=[spy])).fit(X[:12])
    assert spy.seen == {}
    plain = CueCoEmbedder(**params(batch_size=4, n_clusters=3,
                                   cluster_targets="centroids")).fit(X[:12])
    assert_array_equal(est.transform(X[:12]), plain.transform(X[:12]))


def test_graph_targets_need_the_graph(X):
    est = CueCoEmbedder(**params(cluster_graph=0))
    with pytest.raises(ValueError, match="cluster_graph=0"):
        est.fit(X)
    assert not hasattr(est, "encoder_")
    with pytest.raises(InvalidParameterError, match="cluster_targets"):
        CueCoEmbedder(**params(cluster_targets="knn")).fit(X)



def test_auto_trains_towards_the_graph_when_there_is_one(graph_fit, X):
    est, _ = graph_fit
    assert CueCoEmbedder().cluster_targets == "auto"
    auto = CueCoEmbedder(**params(cluster_targets="auto")).fit(X)
    assert_array_equal(auto.transform(X), est.transform(X))
    assert_array_equal(auto.predict(X), est.predict(X))
    # without the graph, "auto" is "centroids" (no error, unlike "graph")
    no_graph = CueCoEmbedder(**params(cluster_targets="auto", cluster_graph=0)).fit(X)
    centroids = CueCoEmbedder(**params(cluster_targets="centroids", cluster_graph=0)).fit(X)
    assert_array_equal(no_graph.transform(X), centroids.transform(X))


def test_collapse_is_judged_on_the_partition_the_term_trained_towards(X, monkeypatch):
    import warnings

    import skcueco._embedder as embedder
    from skcueco.training.run import TrainingCollapseWarning

    # a fit that trains towards the graph ends without the collapse warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingCollapseWarning)
        CueCoEmbedder(**params()).fit(X)
    # the same fit whose graph puts every key in one cluster is warned about
    readout = embedder.readout

    def one_cluster(projections, centroids, n_neighbors, seed, views=None):
        centers, prototypes, owners = readout(projections, centroids, n_neighbors, seed,
                                              views=views)
        return centers, prototypes, torch.zeros_like(owners)

    monkeypatch.setattr(embedder, "readout", one_cluster)
    with pytest.warns(TrainingCollapseWarning, match="100% of the training samples"):
        CueCoEmbedder(**params()).fit(X)
