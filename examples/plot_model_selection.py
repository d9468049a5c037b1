"""
===========================================
Choosing hyper-parameters with GridSearchCV
===========================================

:class:`~skcueco.CueCoClassifier` is a scikit-learn classifier, so
:class:`~sklearn.model_selection.GridSearchCV` tunes it like any other. This
example shows the two searches that matter in practice:

- a search over the parameters of the **self-supervised pretraining**, which
  trains the network again for every candidate and every fold;
- a search over the **head** only, on top of an embedder pretrained once and
  wrapped in :class:`sklearn.frozen.FrozenEstimator`, which never trains the
  network again and takes seconds.

It uses scikit-learn's 8x8 digits.
"""

# %%
# Data
# ----
#
# The digits are split into a training set, on which the searches run their
# cross-validation, and a held-out test set that only scores the final
# models. To keep the full search short, it uses 600 training images.

import time

import matplotlib.pyplot as plt
import pandas as pd
from sklearn.datasets import load_digits
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, train_test_split

from skcueco import CueCoClassifier, CueCoEmbedder

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, train_size=600, test_size=400, random_state=0, stratify=y
)

# %%
# Searching the pretraining parameters
# ------------------------------------
#
# Parameters of the embedder inside the classifier are reached with the
# ``embedder__`` prefix. Here the search compares two temperatures of the
# contrastive loss: a low temperature concentrates the loss on the hardest
# negatives, a high one spreads it over all of them. Each candidate pretrains
# CueCo on the training folds and fits a linear head on their labels, so 2
# candidates and 3 folds train the network 6 times, plus once more to refit
# the best candidate on the whole training set. The runs are short (8
# epochs, a narrow projection head) to keep the example fast.

embedder = CueCoEmbedder(max_epochs=8, hidden_dim=256, batch_size=128, cluster_warmup=2,
                         random_state=0)
search = GridSearchCV(
    CueCoClassifier(embedder, head="linear", random_state=0),
    {"embedder__temperature": [0.1, 0.5]},
    cv=3,
)
start = time.perf_counter()
search.fit(X_train, y_train)
full_seconds = time.perf_counter() - start
print(f"Full search: {len(search.cv_results_['params']) * 3 + 1} pretrainings "
      f"in {full_seconds:.1f} s")
print(f"Best: {search.best_params_}, cross-validated accuracy {search.best_score_:.3f}")
print(f"Held-out accuracy of the refitted best model: {search.score(X_test, y_test):.3f}")

# %%
# ``cv_results_`` holds every candidate's fold scores and fit times, as for
# any scikit-learn search:

results = pd.DataFrame(search.cv_results_)
print(results[["param_embedder__temperature", "mean_test_score", "std_test_score",
               "mean_fit_time"]].to_string(index=False))

# %%
# Searching the head without retraining the network
# -------------------------------------------------
#
# Most of the cost above is pretraining, and pretraining does not use the
# labels. To tune only the head, pretrain once and wrap the fitted embedder
# in :class:`~sklearn.frozen.FrozenEstimator`: ``GridSearchCV`` clones the
# classifier for every candidate and fold, and a frozen estimator survives
# cloning with its fitted network and ignores ``fit``. Any scikit-learn
# classifier can serve as the head; here a logistic regression, whose
# regularisation ``C`` is searched.
#
# The embedder is pretrained on the images of the training set only (their
# labels are not used), so the test set stays unseen. Inside the
# cross-validation the held-out folds' *images* took part in the
# pretraining, but not their labels, as in any semi-supervised setting.

pretrained = CueCoEmbedder(max_epochs=8, hidden_dim=256, batch_size=128, cluster_warmup=2,
                           random_state=0).fit(X_train)
head_search = GridSearchCV(
    CueCoClassifier(FrozenEstimator(pretrained),
                    head=LogisticRegression(max_iter=3000)),
    {"head__C": [0.001, 0.01, 0.1, 1.0, 10.0]},
    cv=3,
)
start = time.perf_counter()
head_search.fit(X_train, y_train)
head_seconds = time.perf_counter() - start
print(f"Head-only search: 15 head fits in {head_seconds:.1f} s, no pretraining")
print(f"Best: {head_search.best_params_}, cross-validated accuracy "
      f"{head_search.best_score_:.3f}")
print(f"Held-out accuracy: {head_search.score(X_test, y_test):.3f}")

# %%
# The regularisation curve: too strong a penalty (small ``C``) underfits the
# embeddings; beyond ``C = 0.1`` the scores level off.

head_results = pd.DataFrame(head_search.cv_results_)
fig, ax = plt.subplots(figsize=(5.5, 3.8), layout="constrained")
ax.errorbar(head_results["param_head__C"].astype(float), head_results["mean_test_score"],
            yerr=head_results["std_test_score"], marker="o", capsize=3)
ax.set_xscale("log")
ax.set_xlabel("C of the logistic-regression head")
ax.set_ylabel("cross-validated accuracy")
ax.set_title("Head-only search on a frozen CueCo embedder")
ax.grid(alpha=0.3)
plt.show()

# %%
# Searching in parallel
# ---------------------
#
# ``GridSearchCV(..., n_jobs=2)`` fits candidates in parallel worker
# processes. On the CPU, scikit-learn's default ``loky`` workers limit the
# threads of each worker to ``cpu_count // n_jobs``, and PyTorch follows that
# limit, so the workers do not fight over the cores. With several GPUs, run
# one worker per GPU, for instance with joblib's dask backend and
# ``CUDA_VISIBLE_DEVICES`` set per dask worker (see the user guide on model
# selection).
