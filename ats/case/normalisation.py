"""The supported data sets and their normalisation constants (torch-free).

The workflow configuration and ``common.smk`` need the list of data sets, their number of classes
and channels without importing torch, so this module only uses the standard library.

Two normalisation modes exist because the original code was inconsistent (docs/original-code.md §2.6):

* ``"faithful"`` (default): the constants the original code used for training, search and attack.
  CIFAR-100 is normalised with the *CIFAR-10* constants and Fashion-MNIST with the *MNIST* ones.
  The authors' released checkpoints were trained on inputs normalised this way, so loading them
  (or comparing S_pri/S_acc numbers with theirs) requires these constants.
* ``"dataset"``: each data set's own constants, the choice a new study would make.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

Constants = tuple[tuple[float, ...], tuple[float, ...]]

NORMALISATION_MODES: tuple[str, ...] = ("faithful", "dataset")


@dataclass(frozen=True)
class DatasetSpec:
    """What every stage needs to know about a data set before opening it.

    ``native_size`` is the stored image side (Fashion-MNIST images are 28×28 and resized to 32 by
    the transform pipeline; CIFAR images are stored at 32×32). ``class_names`` follow the label
    order of the official releases; ``train_size`` and ``test_size`` are the official split sizes
    and ``test_per_class`` the test images of each class (every official test split is balanced),
    which let the workflow check settings that depend on them before any job runs.
    """

    name: str
    num_classes: int
    channels: int
    native_size: int
    class_names: tuple[str, ...] | None = None
    train_size: int | None = None
    test_size: int | None = None
    test_per_class: int | None = None


_FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
_CIFAR100_FINE_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

DATASETS: Mapping[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("fashion-mnist", 10, 1, 28, _FASHION_MNIST_CLASSES, 60_000, 10_000, 1_000),
        DatasetSpec("cifar10", 10, 3, 32, _CIFAR10_CLASSES, 50_000, 10_000, 1_000),
        DatasetSpec("cifar100", 100, 3, 32, _CIFAR100_FINE_CLASSES, 50_000, 10_000, 100),
    )
}

# Per-channel mean and standard deviation of the training split, pixel values scaled to [0, 1].
# CIFAR values are inversefed's (docs/original-code.md §2.6); MNIST's are the customary ones the original used for
# Fashion-MNIST; Fashion-MNIST's own values were computed over all 60 000 × 28 × 28 training pixels
# of the official release (population standard deviation).
_CIFAR10_CONSTANTS: Constants = (
    (0.4914672374725342, 0.4822617471218109, 0.4467701315879822),
    (0.24703224003314972, 0.24348513782024384, 0.26158785820007324),
)
_CIFAR100_CONSTANTS: Constants = (
    (0.5071598291397095, 0.4866936206817627, 0.44120192527770996),
    (0.2673342823982239, 0.2564384639263153, 0.2761504650115967),
)
_MNIST_CONSTANTS: Constants = ((0.1307,), (0.3081,))
_FASHION_MNIST_CONSTANTS: Constants = ((0.2860405969887955,), (0.35302424451492254,))

_CONSTANTS_BY_MODE: Mapping[str, Mapping[str, Constants]] = {
    "faithful": {
        "fashion-mnist": _MNIST_CONSTANTS,
        "cifar10": _CIFAR10_CONSTANTS,
        "cifar100": _CIFAR10_CONSTANTS,
    },
    "dataset": {
        "fashion-mnist": _FASHION_MNIST_CONSTANTS,
        "cifar10": _CIFAR10_CONSTANTS,
        "cifar100": _CIFAR100_CONSTANTS,
    },
}


def dataset_spec(dataset: str) -> DatasetSpec:
    """Return the :class:`DatasetSpec` of ``dataset``; unknown names raise ``ValueError``."""
    try:
        return DATASETS[dataset]
    except KeyError:
        raise ValueError(
            f"unknown dataset {dataset!r}; allowed: {', '.join(sorted(DATASETS))}"
        ) from None


def normalisation_constants(dataset: str, mode: str = "faithful") -> Constants:
    """Return ``(mean, std)`` per channel for ``dataset`` under normalisation ``mode``.

    See the module docstring for why ``"faithful"`` is the default.
    """
    spec = dataset_spec(dataset)
    if mode not in _CONSTANTS_BY_MODE:
        raise ValueError(
            f"unknown normalisation mode {mode!r}; allowed: {', '.join(NORMALISATION_MODES)}"
        )
    return _CONSTANTS_BY_MODE[mode][spec.name]
