"""The preprocessing around a policy (docs/original-code.md §2.5), batched on the device, plus its PIL reference.

The original applied, per image in a DataLoader worker and in this order: zero-pad 4 and crop a
random 32×32 window, flip horizontally with probability ½, apply the policy (one sub-policy drawn
uniformly per image, every op with a fresh random sign), then ``ToTensor`` and ``Normalize``.
Fashion-MNIST images were first replicated to RGB, and after the policy converted back to grey
and resized to 32×32 (a no-op after the crop, a 28→32 bilinear rescale without it).

Here the random choices are drawn up front into an :class:`AugmentationDraw` (from explicit,
seeded generators), and :class:`Preprocessor` applies them to a whole batch on the device with
:mod:`ats.transforms.ops_batched`. :func:`reference_augment` / :func:`reference_preprocess` replay the
same draw per image with PIL and torchvision's own functions; tests require the two to agree
pixel for pixel.

Modes (``mode`` argument):

* ``"plain"``: no crop, flip or policy (the original's ``normal`` mode and ``aug`` mode with the
  empty policy); only the resize to 32×32 when the images are smaller (Fashion-MNIST).
* ``"crop"``: crop and flip; the policy argument is ignored.
* ``"policy"``: crop, flip and the policy. As in the original, ``"policy"`` with the empty policy
  ``()`` is ``"plain"`` (no crop or flip), not ``"crop"``.

A draw holds every random choice whatever the mode, so the same draw gives the same crop and flip
under ``"crop"`` and ``"policy"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

from ats.policies import Policy, format_policy
from ats.transforms.ops_batched import apply_subpolicy_batch, resize_bilinear
from ats.transforms.ops_pil import apply_subpolicy_pil

MODES: tuple[str, ...] = ("plain", "crop", "policy")
OUTPUT_SIZE = 32
CROP_PADDING = 4
MIN_CROP_INPUT_SIZE = OUTPUT_SIZE - 2 * CROP_PADDING  # 24: the padded image must hold the crop

DrawIndex = int | np.integer | slice | Sequence[int] | torch.Tensor


@dataclass(eq=False)  # tensors have no single truth value: compare fields explicitly
class AugmentationDraw:
    """The random choices of a batch of N augmentations, as CPU tensors.

    * ``crop_offsets``: N×2 ``int64``, (top, left) of the 32×32 window in the zero-padded image;
    * ``flips``: N ``bool``, whether the window is flipped horizontally;
    * ``subpolicy``: N ``int64``, which sub-policy of the policy each image gets;
    * ``signs``: N×max_ops ``float32`` of ±1; image n's k-th op uses ``signs[n, k]`` (unsigned ops
      ignore it; columns beyond the chosen sub-policy's length are unused).
    """

    crop_offsets: torch.Tensor
    flips: torch.Tensor
    subpolicy: torch.Tensor
    signs: torch.Tensor

    def __post_init__(self) -> None:
        count = self.flips.shape[0] if self.flips.dim() == 1 else None
        fields = (("crop_offsets", self.crop_offsets, torch.int64, 2), ("flips", self.flips, torch.bool, 1),
                  ("subpolicy", self.subpolicy, torch.int64, 1), ("signs", self.signs, torch.float32, 2))
        for name, tensor, dtype, dims in fields:
            well_formed = (tensor.dtype == dtype and tensor.dim() == dims and tensor.shape[0] == count
                           and tensor.device.type == "cpu" and (name != "crop_offsets" or tensor.shape[1] == 2))
            if not well_formed:
                raise ValueError(
                    f"AugmentationDraw.{name}: expected a CPU {dtype} tensor with {dims} dimension(s) and "
                    f"{count} rows, got a {tensor.device.type} {tensor.dtype} tensor of shape {tuple(tensor.shape)}"
                )

    def __len__(self) -> int:
        return self.flips.shape[0]

    def __getitem__(self, index: DrawIndex) -> AugmentationDraw:
        """The draws of the selected images; an integer selects a draw of length 1."""
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1 if index != -1 else None)
        return AugmentationDraw(self.crop_offsets[index], self.flips[index], self.subpolicy[index], self.signs[index])

    @staticmethod
    def concat(draws: Sequence[AugmentationDraw]) -> AugmentationDraw:
        """The draws one after another (all must have the same number of sign columns)."""
        if not draws:
            raise ValueError("cannot concatenate an empty list of draws")
        widths = {draw.signs.shape[1] for draw in draws}
        if len(widths) > 1:
            raise ValueError(f"draws for different policies (sign columns {sorted(widths)}) cannot be concatenated")
        return AugmentationDraw(*(torch.cat(parts) for parts in zip(
            *((d.crop_offsets, d.flips, d.subpolicy, d.signs) for d in draws))))


def _max_crop_offset(image_size: int) -> int:
    if image_size < MIN_CROP_INPUT_SIZE:
        raise ValueError(f"{image_size}-pixel images are too small to crop {OUTPUT_SIZE}×{OUTPUT_SIZE} "
                         f"after padding by {CROP_PADDING}")
    return image_size + 2 * CROP_PADDING - OUTPUT_SIZE


def sample_draw(policy: Policy, n: int, generator: torch.Generator, *, image_size: int = 32) -> AugmentationDraw:
    """Draw the augmentations of ``n`` images of side ``image_size`` from one CPU ``generator``.

    Like torchvision's ``RandomCrop(32, padding=4)`` the crop offsets are uniform in
    0…image_size+8−32 (0…8 for CIFAR, 0…4 for 28-pixel Fashion-MNIST: pass ``image_size=28``);
    flips, sub-policy choices and signs are uniform. The order of draws is fixed (all offsets,
    then flips, sub-policies, signs), so a seeded generator gives a reproducible draw.
    """
    format_policy(policy)  # raises PolicyError naming a malformed policy
    if generator.device.type != "cpu":
        raise ValueError(f"draws are made on the CPU; got a generator on {generator.device}")
    max_offset = _max_crop_offset(image_size)
    max_ops = max((len(sub_policy) for sub_policy in policy), default=0)
    crop_offsets = torch.randint(0, max_offset + 1, (n, 2), generator=generator)
    flips = torch.randint(0, 2, (n,), generator=generator).bool()
    subpolicy = torch.randint(0, max(len(policy), 1), (n,), generator=generator)
    signs = torch.randint(0, 2, (n, max_ops), generator=generator).float() * 2 - 1
    return AugmentationDraw(crop_offsets, flips, subpolicy, signs)


def draw_per_sample(policy: Policy, seeds: Sequence[int], *, image_size: int = 32) -> AugmentationDraw:
    """One draw per image, image i from its own generator seeded with ``seeds[i]``.

    The augmentation of an image then depends only on its seed (for example
    ``derive_seed(seed, "spri", policy, image_index)``), not on which batch it lands in.
    """
    draws = [sample_draw(policy, 1, torch.Generator().manual_seed(int(seed)), image_size=image_size)
             for seed in seeds]
    return AugmentationDraw.concat(draws) if draws else sample_draw(policy, 0, torch.Generator(),
                                                                     image_size=image_size)


def centred_draw(count: int, *, image_size: int = 32) -> AugmentationDraw:
    """The draw that leaves images where they are: the middle crop window, no flip, sub-policy 0.

    Under ``"crop"`` mode it puts each untransformed image in the frame of the cropped ones (for
    28-pixel Fashion-MNIST: zero-padded by 2), where reconstructions are compared with it.
    """
    offset = _max_crop_offset(image_size) // 2
    return AugmentationDraw(crop_offsets=torch.full((count, 2), offset, dtype=torch.int64),
                           flips=torch.zeros(count, dtype=torch.bool), subpolicy=torch.zeros(count, dtype=torch.int64),
                           signs=torch.ones(count, 1))


def _effective_mode(mode: str, policy: Policy) -> str:
    """The mode actually applied: ``"policy"`` with the empty policy is ``"plain"`` (docs/original-code.md §2.5)."""
    if mode not in MODES:
        raise ValueError(f"unknown augmentation mode {mode!r}; expected one of {MODES}")
    format_policy(policy)
    return "plain" if mode == "policy" and not policy else mode


def _check_draw(draw: AugmentationDraw | None, count: int, image_size: int, policy: Policy,
                mode: str) -> AugmentationDraw:
    """``draw`` if it fits ``count`` images of side ``image_size`` under ``policy``; else ValueError."""
    if draw is None or len(draw) != count:
        raise ValueError(f"mode {mode!r} needs a draw for each of the {count} images, got "
                         f"{'none' if draw is None else len(draw)}")
    max_offset = _max_crop_offset(image_size)
    if count and (int(draw.crop_offsets.min()) < 0 or int(draw.crop_offsets.max()) > max_offset):
        raise ValueError(f"crop offsets must lie in 0..{max_offset} for {image_size}-pixel images, got "
                         f"{int(draw.crop_offsets.min())}..{int(draw.crop_offsets.max())} "
                         f"(draw with image_size={image_size})")
    if mode == "policy":
        max_ops = max(len(sub_policy) for sub_policy in policy)
        if draw.signs.shape[1] < max_ops:
            raise ValueError(f"policy {format_policy(policy)!r} needs {max_ops} signs per image, "
                             f"the draw has {draw.signs.shape[1]}")
        if count and not 0 <= int(draw.subpolicy.min()) <= int(draw.subpolicy.max()) < len(policy):
            raise ValueError(f"draw chooses sub-policies {int(draw.subpolicy.min())}..{int(draw.subpolicy.max())}, "
                             f"but policy {format_policy(policy)!r} has {len(policy)}")
    return draw


class Preprocessor:
    """Batched augmentation and normalisation on one device.

    ``augment`` returns ``uint8`` N×C×32×32, ``normalise`` turns such a batch into the model's
    ``float32`` input (``ToTensor`` then ``Normalize``), and calling the object does both.
    ``channels`` is 3 (CIFAR) or 1 (Fashion-MNIST, handled as grey images: see
    :mod:`ats.transforms.ops_batched`).
    """

    def __init__(self, channels: int, mean: Sequence[float], std: Sequence[float],
                 device: str | torch.device = "cpu") -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        if len(mean) != channels or len(std) != channels or any(value <= 0 for value in std):
            raise ValueError(f"need {channels} means and {channels} positive stds, got mean={tuple(mean)}, "
                             f"std={tuple(std)}")
        self.channels = channels
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, channels, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, channels, 1, 1)
        # A 0-d device tensor, not a Python number: on CUDA, torch divides by a scalar through its
        # reciprocal, which would differ from ToTensor's true division in the last bit.
        self._max_value = torch.tensor(255.0, dtype=torch.float32, device=self.device)

    def _device_batch(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``images`` as a contiguous ``uint8`` N×C×H×W tensor on this device.

        NumPy arrays are N×H×W×C (the at-rest layout); tensors may be N×C×H×W or N×H×W×C, told
        apart by which axis has ``channels`` entries.
        """
        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != self.channels:
                raise ValueError(f"expected a uint8 N×H×W×{self.channels} array, got {images.dtype} "
                                 f"of shape {images.shape}")
            batch = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2)
        elif isinstance(images, torch.Tensor):
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise ValueError(f"expected a uint8 4-d tensor, got {images.dtype} of shape {tuple(images.shape)}")
            channels_first = images.shape[1] == self.channels
            channels_last = images.shape[3] == self.channels
            if channels_first == channels_last:
                raise ValueError(f"cannot tell the {self.channels}-channel axis of a tensor of shape "
                                 f"{tuple(images.shape)} (expected N×C×H×W or N×H×W×C)")
            batch = images.to(self.device)
            batch = batch if channels_first else batch.permute(0, 3, 1, 2)
        else:
            raise ValueError(f"expected a NumPy array or a torch tensor of images, got {type(images).__name__}")
        if batch.shape[2] != batch.shape[3]:
            raise ValueError(f"images must be square, got {batch.shape[2]}×{batch.shape[3]}")
        return batch.contiguous()

    def augment(self, images: np.ndarray | torch.Tensor, mode: str, policy: Policy,
                draw: AugmentationDraw | None = None) -> torch.Tensor:
        """Crop, flip and transform ``images`` as ``mode`` says; ``uint8`` N×C×32×32 on this device.

        ``draw`` (one row per image) is required unless the effective mode is ``"plain"``.
        """
        batch = self._device_batch(images)
        mode = _effective_mode(mode, policy)
        if mode != "plain":
            draw = _check_draw(draw, batch.shape[0], batch.shape[2], policy, mode)
            batch = self._crop_and_flip(batch, draw)
            if mode == "policy":
                batch = self._apply_policy(batch, policy, draw)
        return resize_bilinear(batch, OUTPUT_SIZE)

    def _crop_and_flip(self, batch: torch.Tensor, draw: AugmentationDraw) -> torch.Tensor:
        """Cut each image's window out of the zero-padded batch, columns reversed where flipped."""
        padded = F.pad(batch, (CROP_PADDING,) * 4)
        offsets = draw.crop_offsets.to(self.device)
        flips = draw.flips.to(self.device)
        steps = torch.arange(OUTPUT_SIZE, device=self.device)
        rows = offsets[:, :1] + steps
        columns = offsets[:, 1:] + torch.where(flips[:, None], OUTPUT_SIZE - 1 - steps, steps)
        images = torch.arange(batch.shape[0], device=self.device)[:, None, None]
        windows = padded[images, :, rows[:, :, None], columns[:, None, :]]  # N×32×32×C
        return windows.permute(0, 3, 1, 2).contiguous()

    def _apply_policy(self, batch: torch.Tensor, policy: Policy, draw: AugmentationDraw) -> torch.Tensor:
        """Apply each image's sub-policy; images sharing a sub-policy are transformed together."""
        if len(policy) == 1:
            return apply_subpolicy_batch(batch, policy[0], draw.signs[:, : len(policy[0])])
        result = batch.clone()
        for choice, sub_policy in enumerate(policy):
            members = (draw.subpolicy == choice).nonzero().squeeze(1)
            if members.numel():
                on_device = members.to(self.device)
                result[on_device] = apply_subpolicy_batch(
                    batch[on_device], sub_policy, draw.signs[members, : len(sub_policy)])
        return result

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8`` N×C×H×W → ``float32`` ``(x/255 − mean)/std``, as ``ToTensor`` + ``Normalize``."""
        return (images.to(self.device, torch.float32) / self._max_value - self.mean) / self.std

    def __call__(self, images: np.ndarray | torch.Tensor, mode: str, policy: Policy,
                 draw: AugmentationDraw | None = None) -> torch.Tensor:
        """:meth:`augment` then :meth:`normalise`: the model input, ``float32`` N×C×32×32."""
        return self.normalise(self.augment(images, mode, policy, draw))

    def denormalise(self, inputs: torch.Tensor) -> torch.Tensor:
        """Model-space images back to pixel intensities in [0, 1] (clamped), for metrics and figures."""
        return (inputs.to(self.device) * self.std + self.mean).clamp(0, 1)


def reference_augment(image: np.ndarray, mode: str, policy: Policy, draw: AugmentationDraw | None = None,
                      row: int = 0) -> Image.Image:
    """The original per-image PIL pipeline for one ``uint8`` H×W×C image (C = 1 or 3).

    Uses torchvision's functional ops (pad, crop, hflip, to_grayscale, resize) and
    :mod:`ats.transforms.ops_pil` exactly where the original's ``Compose`` used their random
    counterparts, with the random choices taken from row ``row`` of ``draw`` (which the ``"plain"``
    mode does not need). Returns an ``RGB`` or ``L`` 32×32 image.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"expected a uint8 H×W×C image with C = 1 or 3, got {image.dtype} of shape {image.shape}")
    grey = image.shape[2] == 1
    img = Image.fromarray(image[:, :, 0], "L") if grey else Image.fromarray(image, "RGB")
    if grey:  # the original turned Fashion-MNIST into RGB so that the RGB fill colours apply
        img = TF.to_grayscale(img, num_output_channels=3)
    mode = _effective_mode(mode, policy)
    if mode != "plain":
        one = _check_draw(None if draw is None else draw[row], 1, image.shape[0], policy, mode)
        top, left = one.crop_offsets[0].tolist()
        img = TF.crop(TF.pad(img, CROP_PADDING), top, left, OUTPUT_SIZE, OUTPUT_SIZE)
        if bool(one.flips[0]):
            img = TF.hflip(img)
        if mode == "policy":
            sub_policy = policy[int(one.subpolicy[0])]
            img = apply_subpolicy_pil(img, sub_policy, [int(s) for s in one.signs[0, : len(sub_policy)]])
    if grey:
        img = TF.to_grayscale(img, num_output_channels=1)
    return TF.resize(img, OUTPUT_SIZE)


def reference_preprocess(image: np.ndarray, mode: str, policy: Policy, draw: AugmentationDraw | None = None,
                         row: int = 0, *, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """:func:`reference_augment` followed by ``ToTensor`` and ``Normalize``: ``float32`` C×32×32."""
    return TF.normalize(TF.to_tensor(reference_augment(image, mode, policy, draw, row)), list(mean), list(std))
