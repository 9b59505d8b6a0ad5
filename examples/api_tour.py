"""A tour of the Python API (docs/api.md): data, a model, one policy's scores, an attack and its metrics.

Run from the repository root (Fashion-MNIST from the Debian package ``dataset-fashion-mnist``):

    python examples/api_tour.py --work-dir /tmp/ats-tour

The tests run it on a tiny data set (``--source-dir``) with a few attack iterations.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from ats import api


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("results/api-tour"))
    parser.add_argument("--source-dir", help="folder with the raw Fashion-MNIST files (default: system folders)")
    parser.add_argument("--arch", default="ConvNet32")
    parser.add_argument("--policy", default="3-1-7")
    parser.add_argument("--images", type=int, default=2, help="test images to attack, from index 0")
    parser.add_argument("--iterations", type=int, default=200, help="attack iterations (the paper's: 4800)")
    parser.add_argument("--num-samples", type=int, default=1, help="S_pri images per class")
    parser.add_argument("--window", type=int, default=100, help="test images per S_acc run")
    arguments = parser.parse_args(argv)
    work = arguments.work_dir
    work.mkdir(parents=True, exist_ok=True)

    # 1. Data: the verified HDF5 file, built from the raw files on first use.
    data = api.load_data("fashion-mnist", work / "fashion-mnist.h5", source_dir=arguments.source_dir)
    print(f"{data.spec.name}: {len(data.train_labels)} training and {len(data.test_labels)} test images")

    # 2. A model: built from a seed here; api.load("model.pt", "fashion-mnist", arch) reads a checkpoint.
    model = api.build("fashion-mnist", arguments.arch, seed=0).eval()

    # 3. One policy's scores, as a score shard of the workflow would store them.
    eval_set = api.load_eval_set(work / "fashion-mnist.h5", work / "eval_images.h5",
                                 num_samples=arguments.num_samples, runs=1, start=0, window=arguments.window)
    scores = api.score_policy(arguments.policy, model=model, data=data, eval_set=eval_set, arch=arguments.arch,
                              device="cpu")
    print(f"policy {arguments.policy}: S_pri {scores.spri_mean:.4f}, S_acc {scores.sacc_mean:.2f}")

    # 4. An attack on the first test images, as the attack stage runs it (any attack name or AttackConfig).
    arrays, attrs = api.attack(model, data, range(arguments.images), attack="inversed", arch=arguments.arch,
                               iterations=arguments.iterations, device="cpu", out_h5=work / "attack.h5")
    print(f"{attrs['attack']}: stored mean PSNR {arrays['metrics/psnr'].mean():.2f} dB")

    # 5. Metrics of one's own, on the stored images (N×C×H×W in [0, 1]).
    reconstructions, truth = torch.from_numpy(arrays["reconstructions"]), torch.from_numpy(arrays["ground_truth"])
    metrics = {"psnr": float(api.psnr(reconstructions, truth).mean()),
               "ssim": float(api.ssim(reconstructions, truth).mean()),
               "spri": scores.spri_mean, "sacc": scores.sacc_mean}
    print(f"clamped reconstructions: PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f}")
    return metrics


if __name__ == "__main__":
    main()
