"""The *case* of an experiment: data sets, their normalisation constants, and the models.

Import the submodules directly. :mod:`ats.case.normalisation` is torch-free so that the workflow's
``common.smk`` can read the data set registry without importing torch; this package file therefore
imports nothing.
"""
