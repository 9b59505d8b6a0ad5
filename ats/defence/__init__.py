"""Defences against gradient inversion.

:mod:`ats.defence.names` (torch-free) says what a defence name means; :mod:`ats.defence.gradient`
implements the defences that act on gradients (pruning and noise). Transformation policies are
applied by :mod:`ats.transforms`.
"""
