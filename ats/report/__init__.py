"""Tables and figures of the Snakemake report (stage 6).

Everything here is a pure function over plain data (numpy arrays, lists, dicts): the adapter
scripts in ``workflow/scripts/`` read the HDF5 and TSV outputs of earlier stages and pass their
contents in. Keeping file formats out of this package lets the tests build any edge case (no
chosen policy, diverged attacks, a single point) from literals, without running the workflow.

* :mod:`ats.report.summary`: the per-defence, per-attack summary table and correlations.
* :mod:`ats.report.figures`: the figures, written atomically; it imports matplotlib, not torch.
"""
