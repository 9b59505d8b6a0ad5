"""Per-sample gradient statistics: for every sample of a batch and every parameter tensor, the dot
product of the sample's gradient with its image's reference gradient, and its squared norm.

S_pri (:mod:`ats.search.privacy`) needs only these two numbers per sample and tensor, so the
gradients themselves need not exist. The modules:

* :mod:`.layers`: the registry, one statistics function per layer type (Conv2d, Linear,
  BatchNorm2d: every layer with parameters in :mod:`ats.case.models`), and :data:`.layers.ROUTES`,
  the table of each type's ways of computing them with their costs;
* :mod:`.reductions`: the tensor algebra behind the routes (materialised gradients, Gram matrices);
* :mod:`.folding`: conv–BatchNorm pairs that run as one conv during the pass;
* :mod:`.engine`: the ``layerwise`` engine (one forward and one input-gradient pass with hooks,
  statistics from each layer's input and output gradient) and the general ``vmap`` engine.

A layer with parameters whose type is not registered stops the layerwise engine with
:class:`UnregisteredLayerError` naming it; the ``vmap`` engine must then be asked for by name.
"""

from ats.search.per_sample.engine import (
    GRADIENT_METHODS,
    GradientMethod,
    GradientStats,
    UnregisteredLayerError,
    check_registered,
    gradient_stats,
    route_table,
)

__all__ = ["GRADIENT_METHODS", "GradientMethod", "GradientStats", "UnregisteredLayerError", "check_registered",
           "gradient_stats", "route_table"]
