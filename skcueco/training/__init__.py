"""The training run, free of scikit-learn.

:func:`~skcueco.training.run.fit_cueco` builds the model and optimiser for a
set of resolved settings and runs the :class:`~skcueco.training.engine.Trainer`
over the :class:`~skcueco.training.task.CueCoTask`; the estimators only
validate, resolve settings, call it and publish its result.
"""
