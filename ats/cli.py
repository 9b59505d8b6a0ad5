"""The command line ``ats`` (also ``python -m ats``): single jobs of the workflow, outside Snakemake.

``ats attack`` attacks test images of a checkpoint and ``ats score`` scores policies on a search
model. Each calls the workflow's stage function (:func:`ats.attack.stage.attack_defence`,
:func:`ats.search.scoring.score_shard`) and so writes the same HDF5 file, with a fingerprint of
every input that determines it. Defaults are those of the config schema; see ``docs/api.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ats.attack.configs import ATTACKS, POLICY_AWARE_ATTACKS
from ats.case.architectures import ModelChoice, model_settings, parse_arch
from ats.case.normalisation import DATASETS, NORMALISATION_MODES
from ats.config import schema_default
from ats.defence.names import parse_defence
from ats.policies import parse_policy
from ats.runtime.device import DEVICE_SPECS
from ats.training.stages import FINAL, parse_stage


class UsageError(ValueError):
    """An argument that argparse could not check alone; the message names it."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; return the exit status (2: bad arguments, 1: the job failed)."""
    parser = _parser()
    arguments = parser.parse_args(argv)
    from ats.runtime.hdf5 import CacheError
    from ats.runtime.logs import configure

    configure(arguments.log)
    try:
        return arguments.run(arguments)
    except UsageError as error:
        arguments.parser.error(str(error))
    except (CacheError, OSError, ValueError, RuntimeError) as error:
        print(f"ats {arguments.command}: error: {error}", file=sys.stderr)
        return 1


# --- arguments --------------------------------------------------------------------------------------


def _checked(parse: Any, what: str) -> Any:
    """An argparse ``type`` that runs ``parse`` and turns its ``ValueError`` into a usage error."""
    def convert(text: str) -> Any:
        try:
            parse(text)
        except ValueError as error:  # PolicyError, DefenceError and StageError among them
            raise argparse.ArgumentTypeError(f"{what} {text!r}: {error}") from None
        return text
    return convert


def _image_range(text: str) -> tuple[int, int]:
    """``"0-7"`` or ``"5"`` → (first index, count)."""
    first, _, last = text.partition("-")
    try:
        start, stop = int(first), int(last or first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a test index range such as 0-7 or 5") from None
    if start < 0 or stop < start:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= first <= last")
    return start, stop - start + 1


def _existing_file(text: str) -> Path:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text!r} does not exist")
    return Path(text)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({error})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object of keyword arguments")
    return value


def _common(parser: argparse.ArgumentParser, checkpoint_help: str) -> None:
    """Arguments of every subcommand: checkpoint, model, data, seed, device, output and log."""
    parser.add_argument("--checkpoint", type=_existing_file, required=True, help=checkpoint_help)
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--arch", type=_checked(parse_arch, "architecture"),
                       help=f"one of our architectures (default {schema_default('model.arch')})")
    model.add_argument("--model-class", metavar="MODULE:CLASS",
                       help="a torch.nn.Module class of your own, importable (installed or on PYTHONPATH)")
    parser.add_argument("--model-kwargs", type=_json_object, metavar="JSON",
                        help="keyword arguments of --model-class, a JSON object")
    parser.add_argument("--model-fingerprint", help="fingerprint the checkpoint must carry (default: any)")
    parser.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    parser.add_argument("--dataset-file", type=Path,
                        help="the data set's HDF5 file (default results/data/DATASET.h5, built when missing)")
    parser.add_argument("--source-dir", help="folder with the raw data files, for building --dataset-file")
    parser.add_argument("--download", action="store_true", help="download the raw files if found nowhere")
    parser.add_argument("--normalisation", choices=NORMALISATION_MODES, default=schema_default("dataset.normalisation"))
    parser.add_argument("--seed", type=int, default=schema_default("seed"))
    parser.add_argument("--device", choices=DEVICE_SPECS, default=schema_default("device"))
    parser.add_argument("--out", type=Path, required=True, help="the HDF5 file to write")
    parser.add_argument("--log", type=Path, help="append the log here instead of printing it to stderr")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ats", description="Single jobs of the ATS workflow, outside Snakemake.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{attack,score}")

    attack = commands.add_parser("attack", help="attack test images of a trained model (the attack stage)",
                                 description="Attack test images of a trained model and write an attack file.")
    _common(attack, "the attacked model: one of our checkpoints or a plain state_dict")
    attack.add_argument("--images", type=_image_range, required=True, metavar="FIRST-LAST",
                        help="test indices to attack, e.g. 0-7")
    attack.add_argument("--attack", choices=[*ATTACKS, *POLICY_AWARE_ATTACKS], default="inversed")
    attack.add_argument("--defence", type=_checked(parse_defence, "defence"), default="none",
                        help="the defence the model was trained under (none, crop, a policy such as 3-1-7, "
                             "prune-70, …); a policy's model shares the gradient of a transformed image")
    attack.add_argument("--stage", type=_checked(parse_stage, "training stage"), default=FINAL,
                        help="the training stage the checkpoint holds (init, step-N, epoch-N, final)")
    attack.add_argument("--iterations", type=int, help="override of the attack's iteration budget")
    attack.add_argument("--batch-size", type=int, help=f"config attack.batch_size "
                        f"(default {schema_default('attack.batch_size')})")
    for flag, key in (("transformed-target", "attack.transformed_target"),
                      ("defend-observed-gradient", "attack.defend_observed_gradient"),
                      ("label-recovery", "attack.label_recovery")):
        attack.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction,
                            help=f"config {key} (default {schema_default(key)})")
    attack.set_defaults(run=_run_attack, parser=attack)

    score = commands.add_parser("score", help="score policies (S_pri, S_acc) on a search model (a score shard)",
                                description="Score policies on a search model and write a score shard.")
    _common(score, "the search model, pretrained on a small fraction of the training data")
    score.add_argument("--policy", action="append", required=True, type=_checked(parse_policy, "policy"),
                       help="a policy such as 3-1-7 or 3-1-7+43-18-18 ('' for none); repeat for several")
    score.add_argument("--eval-set", type=Path, required=True,
                       help="the evaluation images' HDF5 file, cut from the data set when missing")
    for flag, key, kind in (("privacy-images", "search.privacy.images", str),
                            ("num-samples", "search.privacy.num_samples", int),
                            ("bins", "search.privacy.bins", int), ("runs", "search.accuracy.runs", int),
                            ("start", "search.accuracy.start", int), ("window", "search.accuracy.window", int)):
        score.add_argument(f"--{flag}", type=kind, default=schema_default(key), help=f"config {key}")
    score.add_argument("--repeat", type=int, default=0, help="the repeat of the scoring (0: the single scoring)")
    score.add_argument("--chunk-size", type=int, help="inputs per gradient pass (default: from the model size)")
    score.set_defaults(run=_run_score, parser=score)
    return parser


def _model(arguments: argparse.Namespace) -> ModelChoice:
    """The model the arguments name; a class is imported and its kwargs checked here."""
    from ats.api import choose_model
    from ats.case.models import custom_model_arguments, resolve_model_class

    if arguments.model_kwargs and not arguments.model_class:
        raise UsageError("argument --model-kwargs: applies to --model-class only")
    if arguments.model_class:
        try:
            resolve_model_class(arguments.model_class)
        except ValueError as error:
            raise UsageError(f"argument --model-class: {error}") from None
    try:
        choice = choose_model(arguments.arch, arguments.model_class, arguments.model_kwargs)
        if arguments.model_class:
            spec = DATASETS[arguments.dataset]
            custom_model_arguments(choice, spec.num_classes, spec.channels)
    except ValueError as error:
        raise UsageError(f"argument --model-kwargs: {error}") from None
    return choice


def _dataset_file(arguments: argparse.Namespace) -> Path:
    """``--dataset-file``, built from the raw files first when it does not exist."""
    from ats.case.datasets import build_dataset_file

    path = arguments.dataset_file or Path("results/data") / f"{arguments.dataset}.h5"
    if not path.exists():
        build_dataset_file(arguments.dataset, path, source_dir=arguments.source_dir, download=arguments.download)
    return path


def _weights_sha256(checkpoint: Path) -> str:
    from ats.runtime.checkpoints import load_checkpoint, state_dict_digest

    payload = load_checkpoint(checkpoint)
    return payload.get("state_dict_sha256") or state_dict_digest(payload["state_dict"])


# --- subcommands ------------------------------------------------------------------------------------


def _run_attack(arguments: argparse.Namespace) -> int:
    from ats.api import _recorded_settings, attack_fingerprint
    from ats.attack.stage import attack_defence
    from ats.case.datasets import load_dataset
    from ats.report.findings import original_phrase, psnr_phrase
    from ats.report.loaders import load_attack_metrics
    from ats.report.summary import summary_rows
    from ats.settings import AttackSettings

    model = _model(arguments)
    dataset_file = _dataset_file(arguments)
    first, count = arguments.images
    test_images = len(load_dataset(dataset_file, expected_dataset=arguments.dataset).test_labels)
    if first + count > test_images:
        raise UsageError(f"argument --images: {first}-{first + count - 1} exceeds the {test_images} test images "
                         f"of {arguments.dataset}")
    given = {"first_target": first, "num_targets": count, "iterations": arguments.iterations,
             "batch_size": arguments.batch_size, "transformed_target": arguments.transformed_target,
             "defend_observed_gradient": arguments.defend_observed_gradient,
             "label_recovery": arguments.label_recovery}
    settings = AttackSettings.from_config({key: value for key, value in given.items() if value is not None})
    file_fingerprint = attack_fingerprint(
        weights_sha256=_weights_sha256(arguments.checkpoint), dataset=arguments.dataset, arch=model,
        defence=arguments.defence, stage=arguments.stage, attack=arguments.attack,
        target_indices=settings.target_indices,
        settings=_recorded_settings(settings, seed=arguments.seed, normalisation=arguments.normalisation))
    started = time.perf_counter()
    attack_defence(dataset_h5=dataset_file, checkpoint=arguments.checkpoint,
                   model_fingerprint=arguments.model_fingerprint, arch=model, defence=arguments.defence,
                   stage=arguments.stage, attack=arguments.attack, settings=settings, seed=arguments.seed,
                   device=arguments.device, normalisation=arguments.normalisation, out_h5=arguments.out,
                   fingerprint=file_fingerprint)
    seconds = time.perf_counter() - started
    # The summary's own statistics: each mean beside its bootstrap interval and the best uninformed guess.
    record = {**load_attack_metrics(arguments.out, expected_fingerprint=file_fingerprint),
              "defence": arguments.defence, "stage": arguments.stage, "attack": arguments.attack}
    [row] = summary_rows([record], {arguments.defence: math.nan}, seed=arguments.seed)
    iterations = settings.iterations or ATTACKS[arguments.attack].iterations
    print(f"{arguments.out}: {arguments.attack} ({iterations} iterations) on test "
          f"images {first}-{first + count - 1} of {arguments.dataset}, defence {arguments.defence}, "
          f"{seconds:.1f} s, fingerprint {file_fingerprint}")
    print(f"  {psnr_phrase(row)}: {row['vs_chance']}")
    if not math.isnan(row["psnr_original"]):
        print(f"  against the untransformed image: {original_phrase(row)} "
              f"({row['psnr_original_chance']:.2f} dB): {row['vs_chance_original']}")
    return 0


def _run_score(arguments: argparse.Namespace) -> int:
    from ats.api import load_eval_set
    from ats.runtime.fingerprint import fingerprint
    from ats.search.eval_set import eval_set_fingerprint
    from ats.search.scoring import read_scores, score_shard
    from ats.settings import ScoringSettings

    model = _model(arguments)
    dataset_file = _dataset_file(arguments)
    privacy = {"images": arguments.privacy_images, "num_samples": arguments.num_samples, "bins": arguments.bins}
    accuracy = {"runs": arguments.runs, "start": arguments.start, "window": arguments.window}
    load_eval_set(dataset_file, arguments.eval_set, **privacy, **accuracy)  # cut when missing, else checked
    images_fingerprint = eval_set_fingerprint(arguments.dataset, privacy=privacy, accuracy=accuracy)
    file_fingerprint = fingerprint({
        "weights": _weights_sha256(arguments.checkpoint), "dataset": arguments.dataset, **model_settings(model),
        "eval_set": images_fingerprint, "policies": arguments.policy, "repeat": arguments.repeat,
        "seed": arguments.seed, "bins": arguments.bins, "normalisation": arguments.normalisation,
    })
    started = time.perf_counter()
    scoring = ScoringSettings.from_config({"privacy": {"bins": arguments.bins},
                                           "chunk_size": arguments.chunk_size or 0})
    score_shard(dataset_h5=dataset_file, eval_set_h5=arguments.eval_set, search_checkpoint=arguments.checkpoint,
                arch=model, policies=arguments.policy, out_h5=arguments.out, seed=arguments.seed,
                repeat=arguments.repeat, device=arguments.device, normalisation=arguments.normalisation,
                settings=scoring, fingerprint=file_fingerprint,
                model_fingerprint=arguments.model_fingerprint, eval_set_fingerprint=images_fingerprint)
    seconds = time.perf_counter() - started
    for entry in read_scores([arguments.out]):
        print(f"policy {entry.policy!r}: S_pri {entry.spri_mean:.5f}, S_acc {entry.sacc_mean:.3f} ({entry.status})")
    print(f"{arguments.out}: {len(arguments.policy)} policies in {seconds:.1f} s, fingerprint {file_fingerprint}")
    return 0
