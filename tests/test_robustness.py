"""Faults injected one at a time: damaged caches, killed writers, non-finite numbers, CUDA OOM.

Each test breaks one thing the way it breaks in practice (a truncated copy, a flipped bit, a
SIGKILL while writing, a NaN, an out-of-memory error on big chunks) and checks that the fault is
reported or absorbed as ``docs/robustness.md`` promises, never used silently. The last section
checks that the same config and seed give bitwise-identical results on the CPU.

Faults covered elsewhere are not repeated here: a missing or damaged data set
(``tests/test_datasets.py``), a corrupt or foreign training state and a NaN training input
(``tests/test_training.py``), bad configs (``tests/test_config_validation.py``,
``tests/test_config_fuzz.py``) and a workflow killed mid-run (``tests/test_interrupt_resume.py``).
"""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from workflow_helpers import REPO

from ats.attack import reconstruct as attack_engine
from ats.attack import run as attack_run
from ats.case import models
from ats.report.summary import PER_IMAGE_METRICS, summary_rows
from ats.runtime import atomic
from ats.runtime.atomic import read_tsv, write_tsv
from ats.runtime.checkpoints import load_checkpoint, save_checkpoint
from ats.runtime.hdf5 import CacheError, read_h5, write_h5
from ats.runtime.provenance import provenance_path, read_verified_tsv, write_with_provenance
from ats.search import accuracy, privacy, scoring
from ats.search.eval_set import build_eval_set
from ats.search.selection import select_policies
from ats.settings import ScoringSettings, SelectionSettings, TrainingSettings
from ats.training import loop as training

FINGERPRINT = "config-a"


# ---------------------------------------------------------------------------------------------
# Damaged caches: every damage is a CacheError that names the file


@pytest.fixture
def cache_file(tmp_path: Path) -> Path:
    path = tmp_path / "shard-0000.h5"
    write_h5(path, {"s_pri": np.linspace(0.1, 0.9, 64), "policy": np.array(["3-1-7", ""])},
             {"bins": 20}, fingerprint=FINGERPRINT)
    return path


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate_to_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_intact_cache_reads_back(cache_file: Path) -> None:
    arrays, attrs = read_h5(cache_file, expected_fingerprint=FINGERPRINT)
    np.testing.assert_array_equal(arrays["s_pri"], np.linspace(0.1, 0.9, 64))
    assert list(arrays["policy"]) == ["3-1-7", ""] and attrs["bins"] == 20


def test_truncated_cache_is_reported(cache_file: Path) -> None:
    _truncate_to_half(cache_file)
    with pytest.raises(CacheError, match=rf"{cache_file}: unreadable or truncated HDF5 file"):
        read_h5(cache_file, expected_fingerprint=FINGERPRINT)


def test_empty_cache_is_reported(cache_file: Path) -> None:
    """What a writer without the temporary-file rename leaves when it is killed at once."""
    cache_file.write_bytes(b"")
    with pytest.raises(CacheError, match=rf"{cache_file}: unreadable"):
        read_h5(cache_file)


def test_flipped_bit_in_the_data_is_reported(cache_file: Path) -> None:
    with h5py.File(cache_file, "r") as handle:
        data_offset = handle["s_pri"].id.get_offset()  # the file stays a valid HDF5 file
    _flip_byte(cache_file, data_offset + 3)
    with pytest.raises(CacheError, match=rf"{cache_file}: content checksum mismatch"):
        read_h5(cache_file, expected_fingerprint=FINGERPRINT)


def test_cache_of_another_config_is_refused(cache_file: Path) -> None:
    with pytest.raises(CacheError, match=rf"{cache_file}: made under a different configuration.*'config-b'"):
        read_h5(cache_file, expected_fingerprint="config-b")


@pytest.mark.parametrize(("attribute", "value", "message"), [
    ("schema_version", 0, "schema version 0, expected 1"),
    ("content_sha256", "0" * 64, "content checksum mismatch"),
])
def test_tampered_cache_attributes_are_reported(cache_file: Path, attribute: str, value: Any, message: str) -> None:
    with h5py.File(cache_file, "a") as handle:
        handle.attrs[attribute] = value
    with pytest.raises(CacheError, match=rf"{cache_file}: {message}"):
        read_h5(cache_file, expected_fingerprint=FINGERPRINT)


@pytest.fixture
def checkpoint_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"weight": torch.arange(1000, dtype=torch.float32)}, fingerprint=FINGERPRINT)
    return path


def test_truncated_checkpoint_is_reported(checkpoint_file: Path) -> None:
    _truncate_to_half(checkpoint_file)
    with pytest.raises(CacheError, match=rf"{checkpoint_file}: unreadable or truncated checkpoint"):
        load_checkpoint(checkpoint_file, expected_fingerprint=FINGERPRINT)


def test_flipped_bit_in_checkpoint_weights_is_reported(checkpoint_file: Path) -> None:
    """torch.load does not check the archive's CRCs, so only our own digest catches this."""
    weights = torch.arange(1000, dtype=torch.float32).numpy().tobytes()
    offset = checkpoint_file.read_bytes().find(weights[400:432])
    assert offset > 0
    _flip_byte(checkpoint_file, offset + 5)
    with pytest.raises(CacheError, match=rf"{checkpoint_file}: checkpoint checksum mismatch"):
        load_checkpoint(checkpoint_file, expected_fingerprint=FINGERPRINT)


def test_checkpoint_of_another_config_is_refused(checkpoint_file: Path) -> None:
    with pytest.raises(CacheError, match=rf"{checkpoint_file}: checkpoint made under a different configuration"):
        load_checkpoint(checkpoint_file, expected_fingerprint="config-b")


def test_plain_state_dict_is_refused_where_a_fingerprint_is_expected(tmp_path: Path) -> None:
    """A bare state_dict (say another defence's weights) has no origin; only an import may take it."""
    plain = tmp_path / "model.pt"
    torch.save({"weight": torch.arange(10, dtype=torch.float32)}, plain)
    with pytest.raises(CacheError, match=rf"{plain}: a plain state_dict, not a checkpoint of this workflow"):
        load_checkpoint(plain, expected_fingerprint=FINGERPRINT)
    assert load_checkpoint(plain)["format"] == "state_dict"  # the import path: no fingerprint expected


def test_every_refusal_names_the_file_and_the_command_that_recomputes_it(tmp_path: Path,
                                                                          checkpoint_file: Path) -> None:
    cache_file = tmp_path / "cache.h5"
    write_h5(cache_file, {"x": np.arange(3)}, fingerprint=FINGERPRINT)
    refusals = [lambda: read_h5(cache_file, expected_fingerprint="config-b"),
                lambda: load_checkpoint(checkpoint_file, expected_fingerprint="config-b"),
                lambda: read_h5(tmp_path / "missing.h5")]
    for refuse in refusals:
        with pytest.raises(CacheError) as caught:
            refuse()
        assert str(caught.value).endswith(f"; recompute it with: snakemake --forcerun {caught.value.path} "
                                          "<your usual options>")


@pytest.fixture
def ranking_file(tmp_path: Path) -> Path:
    path = tmp_path / "ranking.tsv"
    write_with_provenance(path, lambda target: write_tsv(target, ["policy", "score"], [["3-1-7", 0.25]]),
                          fingerprint=FINGERPRINT)
    return path


def test_a_table_with_provenance_reads_back(ranking_file: Path) -> None:
    assert read_verified_tsv(ranking_file, expected_fingerprint=FINGERPRINT) == [{"policy": "3-1-7", "score": "0.25"}]


def test_an_edited_table_is_refused(ranking_file: Path) -> None:
    ranking_file.write_text(ranking_file.read_text().replace("0.25", "0.05"))
    with pytest.raises(CacheError, match=rf"{ranking_file}: content checksum mismatch \(edited or corrupted"):
        read_verified_tsv(ranking_file, expected_fingerprint=FINGERPRINT)


def test_a_table_of_another_config_or_without_record_is_refused(ranking_file: Path) -> None:
    with pytest.raises(CacheError, match=rf"{ranking_file}: made under a different configuration"):
        read_verified_tsv(ranking_file, expected_fingerprint="config-b")
    provenance_path(ranking_file).unlink()
    with pytest.raises(CacheError, match=rf"{ranking_file}: no readable provenance record"):
        read_verified_tsv(ranking_file, expected_fingerprint=FINGERPRINT)


# ---------------------------------------------------------------------------------------------
# Atomic outputs: a writer killed with SIGKILL leaves no file that looks complete

# Each writer runs in a child process with one function replaced by a stall that announces itself;
# the test SIGKILLs the child there. The stalls sit where a real kill hurts most: half-way through
# the HDF5 file, and after a complete checkpoint or table has been written but before its rename.
_STALL = """
import os, sys, time
def stall(*args, **kwargs):
    print("stalled", flush=True)
    time.sleep(120)
"""
_KILLED_WRITERS = {
    "hdf5": _STALL + """
import numpy as np
from ats.runtime import hdf5
hdf5.content_digest = stall  # called inside the open file, after the arrays are written
hdf5.write_h5(sys.argv[1], {"s_pri": np.zeros(10_000)}, fingerprint="config-a")
""",
    "checkpoint": _STALL + """
import torch
from ats.runtime import checkpoints
real_save = torch.save
def save_then_stall(obj, path):
    real_save(obj, path)
    stall()
torch.save = save_then_stall
checkpoints.save_checkpoint(sys.argv[1], {"weight": torch.zeros(10_000)}, fingerprint="config-a")
""",
    "tsv": _STALL + """
from ats.runtime import atomic
os.replace = stall  # the table is complete in the temporary file
atomic.write_tsv(sys.argv[1], ["policy", "score"], [["3-1-7", 0.25]])
""",
}
_FILE_NAMES = {"hdf5": "shard-0000.h5", "checkpoint": "model.pt", "tsv": "ranking.tsv"}


def _write_earlier_version(kind: str, path: Path) -> None:
    if kind == "hdf5":
        write_h5(path, {"s_pri": np.ones(3)}, fingerprint="config-a")
    elif kind == "checkpoint":
        save_checkpoint(path, {"weight": torch.ones(3)}, fingerprint="config-a")
    else:
        write_tsv(path, ["policy", "score"], [["43-18-18", 0.5]])


def _read_back(kind: str, path: Path) -> Any:
    if kind == "hdf5":
        return read_h5(path, expected_fingerprint="config-a")[0]["s_pri"].tolist()
    if kind == "checkpoint":
        return load_checkpoint(path, expected_fingerprint="config-a")["state_dict"]["weight"].tolist()
    return read_tsv(path)


def _kill_while_writing(kind: str, path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITERS[kind], str(path)],
                             stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert child.stdout is not None and child.stdout.readline() == "stalled\n"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(_KILLED_WRITERS))
@pytest.mark.parametrize("earlier_version", [False, True], ids=["new", "rewrite"])
def test_writer_killed_mid_write_leaves_no_complete_looking_file(
    tmp_path: Path, kind: str, earlier_version: bool
) -> None:
    path = tmp_path / _FILE_NAMES[kind]
    if earlier_version:
        _write_earlier_version(kind, path)
        before = _read_back(kind, path)
    _kill_while_writing(kind, path)
    if earlier_version:
        assert _read_back(kind, path) == before  # the complete earlier version is untouched
    else:
        assert not path.exists()
    # The partial file keeps a hidden temporary name, which no reader or Snakemake rule looks for ...
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != path.name]
    assert len(leftovers) == 1 and leftovers[0].startswith(f".{path.name}.") and leftovers[0].endswith(".tmp")
    # ... and the next writer of the same file, here the rerun, deletes it.
    _write_earlier_version(kind, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_next_writer_removes_only_temporaries_of_dead_writers(tmp_path: Path) -> None:
    """Leftovers of a finished process go; those of a live writer (this process), other hosts and other files stay."""
    path = tmp_path / "ranking.tsv"
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead_pid = int(finished.stdout)
    host = atomic._temporary_prefix(path, 0).split(".")[-3]
    orphan = tmp_path / f".ranking.tsv.{host}.{dead_pid}.abc123.tmp"
    live = tmp_path / f".ranking.tsv.{host}.{os.getpid()}.def456.tmp"
    other_host = tmp_path / f".ranking.tsv.another-node.{dead_pid}.ghi789.tmp"
    other_file = tmp_path / f".ranking.tsv.old.{host}.{dead_pid}.jkl012.tmp"
    for leftover in (orphan, live, other_host, other_file):
        leftover.write_text("partial")
    write_tsv(path, ["policy", "score"], [["3-1-7", 0.25]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [path.name, live.name, other_host.name, other_file.name])
    assert read_tsv(path) == [{"policy": "3-1-7", "score": "0.25"}]


_WRITE_CALLS = {"save", "savefig", "write_text", "write_bytes", "to_csv", "dump", "File", "open"}
_EXEMPT_MODULES = {
    "ats/runtime/atomic.py",  # the atomic writers themselves
    "ats/runtime/logs.py",  # job logs are appended to, on purpose: they are not outputs
    "ats/runtime/device.py",  # GPU lock files: held open, never read as results
}


def _writes_outside_atomic_path(source: str) -> list[int]:
    """Line numbers of file-writing calls that are not inside a ``with atomic_path(...)`` block.

    Reading calls (``open(p)``, ``h5py.File(p, "r")``) are recognised by their mode and allowed.
    """
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def inside_atomic_path(node: ast.AST) -> bool:
        while node in parents:
            node = parents[node]
            if isinstance(node, ast.With) and any(
                isinstance(item.context_expr, ast.Call) and getattr(item.context_expr.func, "id", None) == "atomic_path"
                for item in node.items
            ):
                return True
        return False

    def writes(call: ast.Call) -> bool:
        name = getattr(call.func, "attr", getattr(call.func, "id", None))
        if name not in _WRITE_CALLS:
            return False
        if name in ("open", "File"):
            # open(path, mode) and h5py.File(path, mode), but path.open(mode)
            positional = call.args[0:1] if name == "open" and isinstance(call.func, ast.Attribute) else call.args[1:2]
            modes = [arg.value for arg in positional + [kw.value for kw in call.keywords if kw.arg == "mode"]
                     if isinstance(arg, ast.Constant)]
            return any(set(str(mode)) & set("wax+") for mode in modes)
        if name == "dump":  # json/pickle/yaml.dump(obj, handle) writes; yaml.dump(obj) only formats
            return len(call.args) >= 2
        return True

    return sorted(node.lineno for node in ast.walk(tree)
                  if isinstance(node, ast.Call) and writes(node) and not inside_atomic_path(node))


def test_every_writer_goes_through_atomic_path() -> None:
    """Static guard for item 3: new stage code cannot write an output in place unnoticed."""
    sources = sorted((REPO / "ats").rglob("*.py")) + sorted((REPO / "workflow" / "scripts").glob("*.py"))
    offenders = {
        str(path.relative_to(REPO)): lines
        for path in sources
        if str(path.relative_to(REPO)) not in _EXEMPT_MODULES
        and (lines := _writes_outside_atomic_path(path.read_text()))
    }
    assert offenders == {}
    # The guard itself works:
    assert _writes_outside_atomic_path("open(path, 'w').write('x')\npath.open('a')\nopen(path).read()") == [1, 2]
    assert _writes_outside_atomic_path("with atomic_path(p) as tmp:\n    torch.save(x, tmp)") == []


# ---------------------------------------------------------------------------------------------
# Non-finite numbers


@pytest.mark.slow
def test_real_training_divergence_fails_with_a_clear_message(tmp_path: Path, tiny_dataset_h5: Any) -> None:
    """A gradient defence far too strong for the model (noise of std 1e30) really diverges."""
    with pytest.raises(training.TrainingDivergedError,
                       match=r"training diverged: the loss became (nan|inf) at epoch 0, batch \d+ "
                             r"\(defence 'gauss-1e30'\)"):
        training.train_stage(
            dataset_h5=tiny_dataset_h5("cifar10", per_class=2), arch="ConvNet8", defence="gauss-1e30",
            out_checkpoint=tmp_path / "model.pt", out_history_tsv=tmp_path / "history.tsv",
            out_metrics_json=tmp_path / "metrics.json", state_path=tmp_path / "state.pt",
            settings=TrainingSettings.from_config({"epochs": 2, "batch_size": 8}), seed=0, device="cpu",
            normalisation="faithful", fingerprint="fp",
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no model, no state to resume from


class NormaliseOnly:
    """Stand-in for :class:`ats.transforms.pipeline.Preprocessor`: no augmentation, only normalisation."""

    mean = torch.tensor([0.5, 0.4, 0.3]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.25, 0.2, 0.3]).reshape(1, 3, 1, 1)

    def __call__(self, images: np.ndarray, mode: str, policy: Any, draw: Any) -> torch.Tensor:
        return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - self.mean) / self.std


def _run_attack_stage(out_h5: Path, **changes: Any) -> dict[str, np.ndarray]:
    """Attack three 12×12 targets of a small untrained model for six steps; return the stored arrays."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 12 * 12, 10))
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 12, 12, 3), dtype=np.uint8)
    arguments: dict[str, Any] = dict(
        model=model, images_uint8=pixels, labels=np.array([4, 1, 9]), target_indices=np.array([10, 11, 12]),
        preprocessor=NormaliseOnly(), augmentation_mode="plain", policy=(), draw=None, defence=None,
        defend_observed_gradient=False, attack_name="inversed", iterations=6, batch_size=3,
        label_recovery=False, seed=0, device="cpu", train_mean=torch.full((3, 12, 12), 0.5),
        train_mean_original=torch.full((3, 12, 12), 0.5), stage="final",
        training_step=5, out_h5=out_h5, fingerprint=FINGERPRINT,
    )
    arguments.update(changes)
    attack_run.attack_stage(**arguments)
    return read_h5(out_h5, expected_fingerprint=FINGERPRINT)[0]


@pytest.mark.slow
def test_diverged_attack_is_recorded_and_left_out_of_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Target 11's shared gradient turns NaN (as a broken gradient defence would make it)."""
    clean = _run_attack_stage(tmp_path / "clean.h5")
    real_observed_gradients = attack_run.observed_gradients

    def observed_with_a_nan(model: Any, images: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        gradients = real_observed_gradients(model, images, labels)
        gradients[0][1] = math.nan
        return gradients

    monkeypatch.setattr(attack_run, "observed_gradients", observed_with_a_nan)
    arrays = _run_attack_stage(tmp_path / "diverged.h5")
    assert arrays["diverged"].tolist() == [False, True, False]
    assert np.isfinite(arrays["reconstructions"]).all()  # the last finite image, never NaNs
    healthy = [0, 2]
    np.testing.assert_array_equal(arrays["metrics/psnr"][healthy], clean["metrics/psnr"][healthy])

    record = {"defence": "none", "stage": "final", "attack": "inversed", "training_step": 5,
              "diverged": arrays["diverged"], "target_indices": arrays["target_indices"],
              **{name: arrays[f"metrics/{name}"] for name in PER_IMAGE_METRICS}}
    [row] = summary_rows([record], {"none": 0.5}, seed=0)
    assert (row["n_images"], row["n_diverged"]) == (3, 1)
    assert row["psnr_mean"] == pytest.approx(float(np.mean(clean["metrics/psnr"][healthy])))


@pytest.mark.slow
def test_attack_stage_survives_cuda_oom_with_smaller_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A device with room for one attack at a time: the stage still finishes, and says why it is slow."""
    unconstrained = _run_attack_stage(tmp_path / "unconstrained.h5")
    real_attack_jointly = attack_engine._attack_jointly
    chunk_sizes = []

    def attack_with_little_memory(objective: Any, initial: torch.Tensor, *args: Any) -> Any:
        chunk_sizes.append(initial.shape[0])
        if initial.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_attack_jointly(objective, initial, *args)

    monkeypatch.setattr(attack_engine, "_attack_jointly", attack_with_little_memory)
    with caplog.at_level(logging.WARNING, logger=attack_engine.__name__):
        constrained = _run_attack_stage(tmp_path / "constrained.h5")
    assert chunk_sizes == [3, 1, 1, 1]
    assert "CUDA out of memory during 3 attacks, 3 at once; retrying with 1 at once" in caplog.text
    # Chunks only change the batch size of the kernels, hence at most their rounding.
    np.testing.assert_allclose(constrained["reconstructions"], unconstrained["reconstructions"], atol=1e-5)
    assert constrained["diverged"].tolist() == unconstrained["diverged"].tolist() == [False] * 3


# ---------------------------------------------------------------------------------------------
# The search: non-finite scores, CUDA OOM, damaged inputs

SCORED_POLICIES = ["", "3-1-7", "43-18-18"]


def _small_model(arch: str, num_classes: int, num_channels: int) -> torch.nn.Module:
    """Stands in for the ConvNet (whose scoring takes seconds per policy on a busy CPU); same layer kinds."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(num_channels, 4, 3, stride=4, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, num_classes),
    )


@pytest.fixture
def search_inputs(
    tiny_dataset_h5: Any, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """A tiny CIFAR-10 file, its evaluation set and an untrained search model, as the workflow makes them."""
    monkeypatch.setattr(models, "build_model", _small_model)  # score_shard imports it when called
    folder = tmp_path_factory.mktemp("search-inputs")
    dataset = tiny_dataset_h5("cifar10", per_class=1)
    build_eval_set(dataset, folder / "eval_images.h5", mode="per_class", num_samples=1, runs=1, start=0,
                   window=10, fingerprint="eval-fp")
    torch.manual_seed(0)
    save_checkpoint(folder / "model.pt", _small_model("small", 10, 3).state_dict(), fingerprint="pretrain-fp")
    return {"dataset_h5": dataset, "eval_set_h5": folder / "eval_images.h5", "search_checkpoint": folder / "model.pt"}


def _score(search_inputs: dict[str, Any], out_h5: Path, policies: list[str] = SCORED_POLICIES,
           **options: Any) -> dict[str, np.ndarray]:
    scoring.score_shard(**search_inputs, arch="ConvNet8", policies=policies, out_h5=out_h5, seed=7,
                        device="cpu", normalisation="faithful",
                        settings=ScoringSettings.from_config({"privacy": {"bins": 2}, **options}),
                        fingerprint=FINGERPRINT)
    return read_h5(out_h5, expected_fingerprint=FINGERPRINT)[0]


def _select(shards: list[Path], folder: Path) -> tuple[list[dict[str, str]], dict[str, Any]]:
    select_policies(shard_paths=shards, shard_fingerprints=[FINGERPRINT] * len(shards),
                    ranking_tsv=folder / "ranking.tsv", selection_json=folder / "selection.json",
                    settings=SelectionSettings.from_config({"accuracy_threshold": -1e9, "top_k": 2}), num_classes=10,
                    seed=7, fingerprint="selection")
    return read_tsv(folder / "ranking.tsv"), json.loads((folder / "selection.json").read_text())


def test_nonfinite_score_is_listed_last_and_never_chosen(
    search_inputs: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """S_pri = -inf for '3-1-7': compared as a number it would be the most private policy of all."""
    real_privacy_curves = privacy.privacy_curves
    calls = []

    def curves_with_minus_inf(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(len(calls))
        spri, curves = real_privacy_curves(*args, **kwargs)
        return (torch.full_like(spri, -math.inf), curves) if len(calls) == 2 else (spri, curves)

    monkeypatch.setattr(privacy, "privacy_curves", curves_with_minus_inf)
    with caplog.at_level(logging.WARNING):
        arrays = _score(search_inputs, tmp_path / "shard-0000.h5")
    assert list(arrays["status"]) == ["ok", "nonfinite", "ok"]
    assert np.isnan(arrays["policy/1/spri"]).all()  # one marker of failure, NaN, whatever the cause
    assert "policy '3-1-7': non-finite scores stored as NaN" in caplog.text

    ranking, selection = _select([tmp_path / "shard-0000.h5"], tmp_path)
    assert [row["policy"] for row in ranking][-1] == "3-1-7"
    assert (ranking[-1]["status"], ranking[-1]["score"], ranking[-1]["rank"]) == ("nonfinite", "nan", "3")
    assert selection["top_k"] == ["43-18-18"] and selection["num_nonfinite"] == 1


@pytest.mark.slow
def test_scoring_survives_cuda_oom_with_smaller_chunks(
    search_inputs: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A device that fits 8 gradients at once while the job asks for 32: the chunk halves twice."""
    expected = _score(search_inputs, tmp_path / "small-chunks.h5", chunk_size=8)
    chunk_sizes: dict[str, list[int]] = {"privacy": [], "accuracy": []}

    def with_little_memory(name: str, compute: Any) -> Any:
        def compute_or_run_out_of_memory(*args: Any, **kwargs: Any) -> Any:
            size = kwargs["chunk_size"] if "chunk_size" in kwargs else args[-1]
            chunk_sizes[name].append(size)
            if size > 8:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
            return compute(*args, **kwargs)
        return compute_or_run_out_of_memory

    monkeypatch.setattr(privacy, "privacy_curves", with_little_memory("privacy", privacy.privacy_curves))
    monkeypatch.setattr(accuracy, "input_jacobians", with_little_memory("accuracy", accuracy.input_jacobians))
    with caplog.at_level(logging.WARNING):
        arrays = _score(search_inputs, tmp_path / "shard-0000.h5", chunk_size=32)
    # The first policy finds the size that fits; the others start from it.
    assert chunk_sizes["privacy"] == [32, 16, 8, 8, 8] and chunk_sizes["accuracy"] == [8, 8, 8]
    assert "CUDA out of memory during S_pri of ''; retrying with 16 at once" in caplog.text
    assert arrays.keys() == expected.keys()
    for name in arrays:
        np.testing.assert_array_equal(arrays[name], expected[name], err_msg=name)


def test_corrupted_shard_stops_the_selection_naming_it(search_inputs: dict[str, Any], tmp_path: Path) -> None:
    shard = tmp_path / "shard-0000.h5"
    _score(search_inputs, shard)
    with h5py.File(shard, "r") as handle:
        data_offset = handle["policy/1/spri"].id.get_offset()
    _flip_byte(shard, data_offset)
    with pytest.raises(CacheError, match=rf"{shard}: content checksum mismatch"):
        _select([shard], tmp_path)
    assert not (tmp_path / "ranking.tsv").exists()


def test_truncated_search_model_stops_scoring_naming_it(search_inputs: dict[str, Any], tmp_path: Path) -> None:
    damaged = tmp_path / "model.pt"
    shutil.copy(search_inputs["search_checkpoint"], damaged)
    _truncate_to_half(damaged)
    with pytest.raises(CacheError, match=rf"{damaged}: unreadable or truncated checkpoint"):
        _score({**search_inputs, "search_checkpoint": damaged}, tmp_path / "shard-0000.h5")
    assert not (tmp_path / "shard-0000.h5").exists()


# ---------------------------------------------------------------------------------------------
# Determinism on the CPU


@pytest.mark.slow
def test_attack_results_are_bitwise_reproducible(tmp_path: Path) -> None:
    first = _run_attack_stage(tmp_path / "first.h5")
    second = _run_attack_stage(tmp_path / "second.h5")
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_candidates_do_not_depend_on_the_python_process() -> None:
    """Candidate lists are drawn at parse time, in every job: they must agree across processes."""
    script = "from ats.policies import candidate_policies; print(candidate_policies(200, 7, ['3-1-7']))"
    outputs = {
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO,
                       env={**os.environ, "PYTHONHASHSEED": hash_seed}).stdout
        for hash_seed in ("0", "1", "random")
    }
    assert len(outputs) == 1 and outputs.pop().count("'") == 2 * 201


@pytest.mark.slow
def test_scores_and_ranking_are_bitwise_reproducible_and_shard_independent(
    search_inputs: dict[str, Any], tmp_path: Path
) -> None:
    first = _score(search_inputs, tmp_path / "first" / "shard-0000.h5")
    second = _score(search_inputs, tmp_path / "second" / "shard-0000.h5")
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    # Scored alone in another shard, a policy gets exactly the scores it got among others.
    alone = _score(search_inputs, tmp_path / "alone.h5", policies=["43-18-18"])
    for array in ("spri", "curves", "sacc"):
        np.testing.assert_array_equal(alone[f"policy/0/{array}"], first[f"policy/2/{array}"], err_msg=array)

    for folder in ("first", "second"):
        _select([tmp_path / folder / "shard-0000.h5"], tmp_path / folder)
    for output in ("ranking.tsv", "selection.json"):
        assert (tmp_path / "first" / output).read_bytes() == (tmp_path / "second" / output).read_bytes()


_REFAULT_PROBE = """
import resource, sys, torch
from ats.runtime.memory import retain_freed_host_memory
applied = retain_freed_host_memory() if sys.argv[1] == "retain" else False
torch.set_num_threads(1)
conv = torch.nn.Conv2d(16, 16, 3, padding=1)
def step():  # 64 MiB tensors, above glibc's largest default mmap threshold (32 MiB)
    x = torch.randn(256, 16, 64, 64, requires_grad=True)
    conv(x).square().sum().backward()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc tuning")
def test_stages_reuse_freed_host_memory_instead_of_faulting_it_in_again() -> None:
    """Repeated large CPU passes reuse freed memory: a small fraction of the page faults of glibc's default."""
    def probe(mode: str) -> tuple[str, int]:
        applied, faults = subprocess.run([sys.executable, "-c", _REFAULT_PROBE, mode], capture_output=True,
                                         text=True, check=True).stdout.split()
        return applied, int(faults)

    retained, default = probe("retain"), probe("default")
    assert retained[0] == "True" and default[0] == "False"
    assert retained[1] * 5 < default[1], (retained, default)  # measured: 49 000 against 639 000
