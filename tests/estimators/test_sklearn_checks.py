"""scikit-learn's own estimator contract, run on CueCoEmbedder."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from skcueco import CueCoEmbedder

# small and fast: every check fits at least once
FAST = dict(
    max_epochs=2, batch_size=16, hidden_dim=32, projection_dim=16, queue_size=32,
    n_clusters=2, cluster_warmup=1, random_state=0,
)


@parametrize_with_checks([CueCoEmbedder(**FAST)])
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
