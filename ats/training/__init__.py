"""Training of the victim models: the original recipe and the resumable training stage.

:mod:`ats.training.recipe` holds the original "conservative" recipe (optimizer, schedule, loss);
:mod:`ats.training.loop` holds the stage functions :func:`~ats.training.loop.train_stage` and
:func:`~ats.training.loop.import_checkpoint`. Import the submodules directly; this file imports
nothing so that importing one of them does not pull in the other's dependencies.
"""
