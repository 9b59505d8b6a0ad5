"""The command line (``ats attack``, ``ats score``): the workflow's files, read back by its readers,
and clear errors."""

from __future__ import annotations

import logging
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from ats.api import attack_fingerprint
from ats.attack.stage import attack_defence
from ats.case.models import build_model
from ats.cli import main
from ats.report.findings import original_phrase, psnr_phrase
from ats.report.loaders import load_attack_metrics
from ats.report.summary import summary_rows
from ats.runtime.checkpoints import load_checkpoint, save_checkpoint
from ats.runtime.hdf5 import read_h5
from ats.search.scoring import read_scores
from ats.settings import AttackSettings
from tests.conftest import tiny_dataset_file
from tests.custom_models import TinyNet


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """(dataset file, a ConvNet8 checkpoint, a TinyNet checkpoint, folder) on tiny Fashion-MNIST data."""
    folder = tmp_path_factory.mktemp("cli")
    dataset = tiny_dataset_file(folder, "fashion-mnist", per_class=2)
    torch.manual_seed(4)
    save_checkpoint(folder / "convnet8.pt", build_model("ConvNet8", 10, 1).state_dict(), fingerprint="model-fp")
    save_checkpoint(folder / "tiny.pt", TinyNet(10, 1, width=3).state_dict(), fingerprint="tiny-fp")
    return dataset, folder / "convnet8.pt", folder / "tiny.pt", folder


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch):
    """``main`` points logging at the stderr of its test, which pytest closes afterwards; undo that."""
    from ats.runtime import logs

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setattr(logs, "_progress_stream", logs._progress_stream)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _attack_arguments(inputs, out, *extra):
    dataset, checkpoint, _, _ = inputs
    return ["attack", "--checkpoint", str(checkpoint), "--arch", "ConvNet8", "--dataset", "fashion-mnist",
            "--dataset-file", str(dataset), "--images", "1-2", "--attack", "inversed", "--defence", "3-1-7",
            "--iterations", "2", "--seed", "3", "--device", "cpu", "--out", str(out), *extra]


@pytest.mark.slow
def test_attack_writes_the_attack_stages_file(inputs, tmp_path, capsys) -> None:
    dataset, checkpoint, _, _ = inputs
    assert main(_attack_arguments(inputs, tmp_path / "cli.h5", "--model-fingerprint", "model-fp")) == 0
    printed = capsys.readouterr().out
    assert "inversed (2 iterations) on test images 1-2 of fashion-mnist, defence 3-1-7," in printed
    expected = attack_fingerprint(  # what the file's fingerprint covers, recomputed
        weights_sha256=load_checkpoint(checkpoint)["state_dict_sha256"], dataset="fashion-mnist", arch="ConvNet8",
        defence="3-1-7", stage="final", attack="inversed", target_indices=[1, 2],
        settings={"iterations": 2, "batch_size": 32, "transformed_target": True, "defend_observed_gradient": True,
                  "label_recovery": False, "seed": 3, "normalisation": "faithful"})
    metrics = load_attack_metrics(tmp_path / "cli.h5", expected_fingerprint=expected)  # the report's reader
    assert len(metrics["psnr"]) == 2
    # Each mean is printed beside its interval, its chance level and the verdict, as summary.tsv has them.
    [row] = summary_rows([{**metrics, "defence": "3-1-7", "stage": "final", "attack": "inversed"}],
                         {"3-1-7": math.nan}, seed=3)
    assert f"{psnr_phrase(row)}: {row['vs_chance']}" in printed
    assert (f"against the untransformed image: {original_phrase(row)} ({row['psnr_original_chance']:.2f} dB): "
            f"{row['vs_chance_original']}") in printed
    assert f"PSNR {row['psnr_mean']:.2f} dB [{row['psnr_ci_low']:.2f}, {row['psnr_ci_high']:.2f}]" in printed
    # The stage function with the same settings writes the same arrays (only the fingerprint is the caller's).
    attack_defence(dataset_h5=dataset, checkpoint=checkpoint, model_fingerprint=None, arch="ConvNet8", defence="3-1-7",
                   stage="final", attack="inversed",
                   settings=AttackSettings.from_config({"first_target": 1, "num_targets": 2, "iterations": 2}),
                   seed=3, device="cpu", normalisation="faithful", out_h5=tmp_path / "stage.h5", fingerprint="x")
    cli_arrays, cli_attrs = read_h5(tmp_path / "cli.h5")
    stage_arrays, stage_attrs = read_h5(tmp_path / "stage.h5", expected_fingerprint="x")
    assert cli_arrays.keys() == stage_arrays.keys()
    for key in cli_arrays:
        np.testing.assert_array_equal(cli_arrays[key], stage_arrays[key], err_msg=key)
    assert {k: v for k, v in cli_attrs.items() if k not in ("fingerprint", "content_sha256")} == \
        {k: v for k, v in stage_attrs.items() if k not in ("fingerprint", "content_sha256")}
    # The fingerprint covers the settings: another seed gives another one.
    assert main(_attack_arguments(inputs, tmp_path / "seed4.h5", "--seed", "4")) == 0
    assert read_h5(tmp_path / "seed4.h5")[1]["fingerprint"] != cli_attrs["fingerprint"]


def test_attack_of_a_users_model(inputs, tmp_path) -> None:
    dataset, _, tiny, _ = inputs
    assert main(["attack", "--checkpoint", str(tiny), "--model-class", "tests.custom_models:TinyNet",
                 "--model-kwargs", '{"width": 3}', "--dataset", "fashion-mnist", "--dataset-file", str(dataset),
                 "--images", "0", "--iterations", "2", "--device", "cpu", "--out", str(tmp_path / "tiny.h5")]) == 0
    assert read_h5(tmp_path / "tiny.h5")[0]["reconstructions"].shape == (1, 1, 32, 32)


@pytest.mark.slow
def test_score_writes_a_score_shard(inputs, tmp_path, capsys) -> None:
    dataset, checkpoint, _, _ = inputs
    arguments = ["score", "--checkpoint", str(checkpoint), "--arch", "ConvNet8", "--dataset", "fashion-mnist",
                 "--dataset-file", str(dataset), "--policy", "3-1-7", "--policy", "", "--eval-set",
                 str(tmp_path / "eval.h5"), "--num-samples", "1", "--bins", "3", "--runs", "1", "--start", "0",
                 "--window", "12", "--seed", "7", "--device", "cpu", "--out", str(tmp_path / "shard.h5")]
    assert main(arguments) == 0
    assert "policy '3-1-7': S_pri" in capsys.readouterr().out
    scores = read_scores([tmp_path / "shard.h5"])  # the selection's reader
    assert [entry.policy for entry in scores] == ["3-1-7", ""]
    assert all(entry.is_finite and entry.curves.shape == (10, 4) for entry in scores)
    # The evaluation images now exist; other settings for them are refused rather than mixed.
    assert main([*arguments[:-2], "--out", str(tmp_path / "again.h5")]) == 0
    assert main([*arguments[:-2], "--num-samples", "2", "--out", str(tmp_path / "other.h5")]) == 1
    assert f"ats score: error: {tmp_path / 'eval.h5'}" in capsys.readouterr().err


BAD_ARGUMENTS = [
    (["--images", "7-3"], "argument --images"),
    (["--images", "0-40"], "argument --images: 0-40 exceeds the 20 test images"),
    (["--defence", "99-1"], "argument --defence"),
    (["--arch", "VGG16"], "argument --arch"),
    (["--stage", "middle"], "argument --stage"),
    (["--arch", "ConvNet8", "--model-kwargs", '{"width": 3}'], "argument --model-kwargs: applies to --model-class"),
    (["--model-class", "no_such_module:Net"], "argument --model-class: model class 'no_such_module:Net'"),
    (["--model-class", "tests.custom_models:TinyNet", "--model-kwargs", "[3]"], "argument --model-kwargs"),
    (["--model-class", "tests.custom_models:TinyNet", "--model-kwargs", '{"depth": 3}'], "argument --model-kwargs"),
    (["--attack", "deepleakage"], "argument --attack"),
]


@pytest.mark.parametrize("extra,words", BAD_ARGUMENTS, ids=[" ".join(case[0]) for case in BAD_ARGUMENTS])
def test_a_bad_argument_is_named(inputs, tmp_path, capsys, extra, words) -> None:
    dataset, checkpoint, _, _ = inputs
    arguments = ["attack", "--checkpoint", str(checkpoint), "--dataset", "fashion-mnist", "--dataset-file",
                 str(dataset), "--images", "0", "--device", "cpu", "--out", str(tmp_path / "x.h5")]
    if "--arch" not in extra and "--model-class" not in extra:
        arguments += ["--arch", "ConvNet8"]
    with pytest.raises(SystemExit) as caught:
        main(arguments + extra)
    assert caught.value.code == 2
    assert f"ats attack: error: {words}" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_a_bad_policy_is_named(inputs, tmp_path, capsys) -> None:
    dataset, checkpoint, _, _ = inputs
    with pytest.raises(SystemExit):
        main(["score", "--checkpoint", str(checkpoint), "--dataset", "fashion-mnist", "--policy", "3-50-7",
              "--eval-set", str(tmp_path / "e.h5"), "--out", str(tmp_path / "s.h5")])
    assert "argument --policy: policy '3-50-7'" in capsys.readouterr().err


def test_a_checkpoint_of_another_model_fails_naming_the_file(inputs, tmp_path, capsys) -> None:
    dataset, _, tiny, _ = inputs
    status = main(["attack", "--checkpoint", str(tiny), "--arch", "ConvNet8", "--dataset", "fashion-mnist",
                   "--dataset-file", str(dataset), "--images", "0", "--device", "cpu", "--out", str(tmp_path / "x.h5")])
    assert status == 1 and f"{tiny}: does not fit the model" in capsys.readouterr().err


def test_python_dash_m_ats_runs_the_command_line() -> None:
    result = subprocess.run([sys.executable, "-m", "ats", "attack", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "--images FIRST-LAST" in result.stdout
