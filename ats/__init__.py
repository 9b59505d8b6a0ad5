"""ATS: Automatic Transformation Search against gradient inversion.

The package is imported by the Snakemake workflow on every job start, so this module and the
torch-free modules it lists (:mod:`ats.policies`, :mod:`ats.defence.names`) must stay light.
"""

__version__ = "0.1.0"
