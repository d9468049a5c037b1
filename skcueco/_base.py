"""What both estimators share around fitting."""

from contextlib import contextmanager


@contextmanager
def restored_on_error(estimator):
    """A fit that fails leaves ``estimator`` exactly as it was.

    A fitted model stays fitted with its previous weights and input
    description (never a mix of the old model and the new input); an
    unfitted estimator stays unfitted. Fitted attributes are only ever
    replaced, never changed in place, so restoring the attribute dictionary
    restores the model.
    """
    before = dict(vars(estimator))
    try:
        yield
    except BaseException:
        vars(estimator).clear()
        vars(estimator).update(before)
        raise
