"""Failures say what went wrong and where: a job's traceback in its log, a full disk with the path,
and the job-time checks that name the config key (those that need the data or the scores)."""

from __future__ import annotations

import errno
import os
import pathlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from workflow_helpers import REPO

from ats.runtime.checkpoints import save_checkpoint
from ats.search.scoring import make_policy_scores, write_scores
from ats.search.selection import NothingChosenError, select_policies
from ats.settings import SelectionSettings, TrainingSettings
from ats.training import loop

SNAKEMAKE = Path(sys.executable).parent / "snakemake"


@pytest.mark.slow
def test_a_failing_job_writes_its_traceback_to_its_log(tmp_path: Path) -> None:
    """Snakemake's error says to check the job's log; the log must hold the traceback."""
    (tmp_path / "Snakefile").write_text(
        'rule fail:\n    output: "out.txt"\n    log: "fail.log"\n    script: "fail.py"\n'
    )
    (tmp_path / "fail.py").write_text(
        "from ats.runtime.logs import configure\n"
        "configure(snakemake.log[0])\n"
        "def stage_function():\n"
        "    raise ValueError('broken on purpose')\n"
        "stage_function()\n"
    )
    result = subprocess.run([str(SNAKEMAKE), "--cores", "1", "--snakefile", str(tmp_path / "Snakefile"),
                             "--directory", str(tmp_path)], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode != 0
    log = (tmp_path / "fail.log").read_text()
    assert "the job failed with ValueError" in log, log
    assert "Traceback (most recent call last)" in log and "in stage_function" in log, log
    assert "ValueError: broken on purpose" in log, log


def test_a_full_disk_while_saving_a_model_names_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save's own writer says 'iostream error' (or 'unexpected pos'); ours says what and where."""
    def disk_full(self: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pathlib.Path, "write_bytes", disk_full)
    path = tmp_path / "train" / "none" / "model.pt"
    with pytest.raises(OSError) as caught:
        save_checkpoint(path, {"weight": torch.ones(10)}, fingerprint="fp")
    assert caught.value.errno == errno.ENOSPC
    assert str(caught.value) == f"[Errno {errno.ENOSPC}] No space left on device: '{path}'"
    assert list(path.parent.iterdir()) == []  # no model, no temporary file


def _shard(folder: Path, sacc: float) -> Path:
    """One shard of the reference and two policies, all with mean S_acc ``sacc``."""
    labels = np.array([0, 0, 1, 1])
    scores = [make_policy_scores(policy, np.full(4, spri), np.full((4, 3), spri), labels, np.array([sacc, sacc]))
              for policy, spri in (("", 0.6), ("3-1-7", 0.4), ("5", 0.3))]
    path = folder / "repeat-0" / "shard-0000.h5"
    write_scores(path, scores, privacy_indices=np.arange(4), privacy_labels=labels, run_sizes=[2, 2], attrs={},
                 fingerprint="shard-fp")
    return path


def _select(folder: Path, shard: Path, **selection) -> None:
    select_policies(shard_paths=[shard], shard_fingerprints=["shard-fp"], ranking_tsv=folder / "ranking.tsv",
                    selection_json=folder / "selection.json",
                    settings=SelectionSettings.from_config({"top_k": 2, **selection}), num_classes=10, seed=7,
                    fingerprint="selection-fp")


def test_a_selection_that_chooses_nothing_fails_naming_the_key(tmp_path: Path) -> None:
    """It used to log a warning and end green with no policy chosen."""
    shard = _shard(tmp_path, sacc=-10.0)
    with pytest.raises(NothingChosenError) as caught:
        _select(tmp_path, shard, accuracy_threshold=-5.0)
    message = str(caught.value)
    assert "S_acc threshold -5.000 (search.selection.accuracy_threshold, config)" in message
    assert "best mean S_acc of the 2 finite candidates is -10.000" in message
    assert "search.selection.allow_empty: true" in message
    assert not (tmp_path / "ranking.tsv").exists() and not (tmp_path / "selection.json").exists()


def test_an_empty_selection_passes_when_the_config_allows_it(tmp_path: Path) -> None:
    _select(tmp_path, _shard(tmp_path, sacc=-10.0), accuracy_threshold=-5.0, allow_empty=True)
    assert (tmp_path / "selection.json").exists()


def test_training_refuses_more_test_images_than_the_split_holds(tmp_path: Path, tiny_dataset_h5) -> None:
    """The parse-time check knows the official split; this one guards the stage function itself."""
    with pytest.raises(ValueError, match=r"training.test_images: 21 is more than the 20 test images"):
        loop.train_stage(
            dataset_h5=tiny_dataset_h5("cifar10", per_class=2), arch="ConvNet8", defence="none",
            out_checkpoint=tmp_path / "model.pt", out_history_tsv=tmp_path / "history.tsv",
            out_metrics_json=tmp_path / "metrics.json", state_path=tmp_path / "state.pt",
            settings=TrainingSettings.from_config({"epochs": 1, "batch_size": 16, "test_images": 21}), seed=0,
            device="cpu", normalisation="faithful", fingerprint="fp",
        )
    assert not (tmp_path / "model.pt").exists()
