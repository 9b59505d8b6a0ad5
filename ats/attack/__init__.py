"""Gradient-inversion attacks: configs, batched reconstruction, label recovery and image metrics.

:mod:`ats.attack.configs` is torch-free; the other modules import torch. See ``docs/attacks.md``.
"""
