"""Image transformations of ATS.

* :mod:`ats.transforms.ops_pil`: the per-image PIL reference of the 50 ops, with the original
  semantics (the yardstick);
* :mod:`ats.transforms.ops_batched`: the same ops on batches of ``uint8`` tensors on any device,
  pixel-identical to the reference;
* :mod:`ats.transforms.pipeline`: crop, flip, policy and normalisation around them
  (:class:`~ats.transforms.pipeline.Preprocessor`), the seeded random draws, and the per-image
  PIL reference of the whole pipeline.

See ``docs/transforms.md``.
"""
