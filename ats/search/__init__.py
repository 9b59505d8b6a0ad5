"""The policy search: evaluation images, the privacy and accuracy scores, shard scoring, selection.

Import the submodules directly. :mod:`ats.search.selection` (and the shard reader in
:mod:`ats.search.scoring`) do not import torch, so the selection job and the report start fast;
this package file therefore imports nothing. See docs/search.md.
"""
