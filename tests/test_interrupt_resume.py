"""The workflow killed with SIGKILL at every stage, then resumed as README.md says.

A tiny Fashion-MNIST (random pixels in the official IDX format, 400 images per split) keeps every
job short, and ``--cores 1`` runs one job at a time, so each kill lands in a known job. The
uninterrupted reference run goes at the same time as the interrupted runs, one core each.

Two kills (:data:`KILL_POINTS`) take down the whole process group: mid-scoring (a shard is scored
again from its start) and mid-training (training resumes from ``resume.pt``). Five kill the
Snakemake process alone, as an out-of-memory killer or ``kill -9 <pid>`` does, in the pretraining
of the search model, the selection checkpoint, a training snapshot, an attack and the summary:
the job lives on and finishes its files without Snakemake's records of it. A fast job may finish
in the moment between its detection and the kill; the checks below allow for that.

After a kill the run continues with what README.md tells users to type::

    snakemake --unlock <same options>
    snakemake --rerun-incomplete <same options>

and the test checks that the run completes, that ranking and summary are byte-for-byte those of
the uninterrupted run, and that nothing finished before a kill was computed again: its files keep
their inode and mtime, its logs are untouched, and the resumed training log starts at the first
unfinished epoch.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import pytest
import torch
import yaml
from conftest import write_fashion_mnist_folder
from workflow_helpers import REPO, SNAKEMAKE, TEST_CONFIG

pytestmark = pytest.mark.workflow

EPOCHS = 3
POLL_INTERVAL_S = 0.05
RUN_TIMEOUT_S = 900


def interrupt_config(raw_data: Path) -> dict:
    """Over tests/config/test.yaml: local tiny data, three shards of one repeat, two trained defences of 3 epochs."""
    return {
        "dataset": {"source_dir": str(raw_data), "download": False},
        "search": {"pretrain": {"fraction": 0.25}, "shard_size": 2, "repeats": 1, "selection": {"top_k": 1}},
        "training": {"epochs": EPOCHS, "train_fraction": 1.0, "eval_every": 1, "baselines": ["crop"],
                     "gradient_defences": []},
    }


def snakemake_command(workdir: Path, *options: str) -> list[str]:
    return [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(TEST_CONFIG), str(workdir / "override.yaml"), "--cores", "1", *options]


def start(workdir: Path, *options: str) -> subprocess.Popen:
    """Start snakemake in its own process group, so that one killpg takes its jobs down with it."""
    with (workdir / "snakemake.out").open("a") as output:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(snakemake_command(workdir, *options), cwd=workdir, start_new_session=True,
                                stdout=output, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONHASHSEED": "0"})


# ---------------------------------------------------------------------------------------------
# Kill points: each looks at the files a running workflow leaves and names the job it hits.


@dataclass(frozen=True)
class Job:
    """One job of the workflow: its rule and its wildcards, as its log path spells them ("" if none)."""

    rule: str
    name: str = ""

    def __str__(self) -> str:
        return f"{self.rule} {self.name}".strip()


TRAINING_OUTPUTS = ("model.pt", "history.tsv", "metrics.json")
OUTPUTS: dict[str, Callable[[str], tuple[str, ...]]] = {  # rule -> the files its job of that name writes
    "pretrain_search_model": lambda _: tuple(f"results/search/pretrained/{file}" for file in TRAINING_OUTPUTS),
    "score_shard": lambda shard: (f"results/search/scores/{shard}.h5",),
    "select_policies": lambda _: ("results/search/ranking.tsv", "results/search/selection.json"),
    "train_defence": lambda defence: tuple(f"results/train/{defence}/{file}" for file in TRAINING_OUTPUTS),
    "snapshot_defence": lambda name: ("results/train/{}/snapshots/{}.pt".format(*name.split("/")),),
    "attack_defence": lambda name: (f"results/attack/{name}.h5",),
    "summarize": lambda _: ("results/summary.tsv",),
}


def outputs(job: Job) -> tuple[str, ...]:
    return OUTPUTS[job.rule](job.name)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def running(rule: str) -> Callable[[Path], Job | None]:
    """A job of ``rule`` has started (its log has the runtime line every job writes first) and not
    written all its outputs yet."""
    def detect(workdir: Path) -> Job | None:
        logs = workdir / "results/logs"
        for log in [logs / f"{rule}.log", *sorted((logs / rule).rglob("*.log"))]:
            job = Job(rule, "" if log.parent == logs else str(log.relative_to(logs / rule).with_suffix("")))
            if "runtime hostname=" in _read(log) and not all((workdir / path).exists() for path in outputs(job)):
                return job
        return None
    return detect


def mid_scoring(workdir: Path) -> Job | None:
    """A shard job is inside its stage function while another shard is already finished."""
    scores = workdir / "results/search/scores"
    job = running("score_shard")(workdir)
    return job if job and any(scores.glob("repeat-*/shard-*.h5")) else None


def mid_training(workdir: Path) -> Job | None:
    """A defence has saved its first epoch's state and is training the next one."""
    for log in sorted((workdir / "results/logs/train_defence").glob("*.log")):
        text = _read(log)
        if f"epoch 0 (last {EPOCHS - 1})" in text and "final test accuracy" not in text:
            return Job("train_defence", log.stem)
    return None


@dataclass(frozen=True)
class KillPoint:
    """Where a run is killed: ``detect`` names the job it hits; ``master_only`` kills the Snakemake
    process alone (its job lives on), otherwise its whole process group."""

    name: str
    detect: Callable[[Path], Job | None]
    master_only: bool


KILL_POINTS = (
    KillPoint("master mid-pretraining", running("pretrain_search_model"), master_only=True),
    KillPoint("group mid-scoring", mid_scoring, master_only=False),
    KillPoint("master mid-selection", running("select_policies"), master_only=True),
    KillPoint("group mid-training", mid_training, master_only=False),
    KillPoint("master mid-snapshot", running("snapshot_defence"), master_only=True),
    KillPoint("master mid-attack", running("attack_defence"), master_only=True),
    KillPoint("master mid-summary", running("summarize"), master_only=True),
)


def _written_by(job: Job, path: str) -> bool:
    """Whether ``job`` writes ``path`` (a table's ``<file>.provenance.json`` included)."""
    return any(path.startswith(output) for output in outputs(job))


def _group_alive(group: int) -> bool:
    """Whether any process of the process group ``group`` still runs (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


@dataclass
class Kill:
    """A run killed at a kill point, with what existed at that moment."""

    point: str
    job: Job
    finished_files: dict[str, tuple[int, int]]  # path -> (inode, mtime_ns)
    logs: dict[str, str]  # path -> content


def snapshot(workdir: Path) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """Identity of every result file, and the text of every log.

    Left out: hidden temporary files, training states (``resume.pt``, the running job's own
    progress, deleted when it finishes) and benchmarks (Snakemake rewrites them per job).
    """
    results = workdir / "results"
    files = {str(p.relative_to(workdir)): (p.stat().st_ino, p.stat().st_mtime_ns)
             for p in results.rglob("*") if p.is_file() and not p.name.startswith(".")
             and p.name != "resume.pt" and "logs" not in p.parts and "benchmarks" not in p.parts}
    logs = {str(p.relative_to(workdir)): p.read_text() for p in (results / "logs").rglob("*.log")}
    return files, logs


def run_until(workdir: Path, pending: list[KillPoint]) -> Kill | None:
    """Run the workflow; SIGKILL it when the first of ``pending`` names a job. ``None`` if it finished.

    A master-only kill leaves the run to its orphaned job until that job ends, as README.md says
    to do before resuming.
    """
    process = start(workdir, "--rerun-incomplete")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while process.poll() is None and time.monotonic() < deadline:
            point, job = next(((point, job) for point in pending if (job := point.detect(workdir))), (None, None))
            if point and job:
                files, logs = snapshot(workdir)
                if point.master_only:
                    process.kill()
                    process.wait()
                    while _group_alive(process.pid) and time.monotonic() < deadline:
                        time.sleep(POLL_INTERVAL_S)
                else:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                # Should the killed job have finished its output in the moment before the kill,
                # Snakemake rightly redoes it; only what other jobs finished must survive.
                finished = {path: identity for path, identity in files.items() if not _written_by(job, path)}
                return Kill(point.name, job, finished, logs)
            time.sleep(POLL_INTERVAL_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    output = _read(workdir / "snakemake.out")
    assert process.returncode == 0, output[-5000:]
    return None


def unlock(workdir: Path) -> None:
    """What a killed Snakemake leaves behind: a lock that the next run refuses to ignore."""
    result = subprocess.run(snakemake_command(workdir, "--unlock"), cwd=workdir, capture_output=True, text=True)
    assert result.returncode == 0 and "Unlocked working directory" in result.stdout + result.stderr, result.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The interrupted workflow (one kill per kill point, then a complete run) and the uninterrupted one."""
    raw = tmp_path_factory.mktemp("raw-fashion-mnist")
    write_fashion_mnist_folder(raw, per_class=40)  # S_acc needs test indices up to 399
    reference, interrupted = tmp_path_factory.mktemp("reference"), tmp_path_factory.mktemp("interrupted")
    for workdir in (reference, interrupted):
        (workdir / "override.yaml").write_text(yaml.safe_dump(interrupt_config(raw)))

    reference_process = start(reference)
    kills: list[Kill] = []
    pending = list(KILL_POINTS)
    while (kill := run_until(interrupted, pending)) is not None:
        kills.append(kill)
        pending = [point for point in pending if point.name != kill.point]
        unlock(interrupted)
    assert reference_process.wait(timeout=RUN_TIMEOUT_S) == 0, _read(reference / "snakemake.out")[-5000:]
    return {"reference": reference, "interrupted": interrupted, "kills": kills}


def test_every_kill_happened_and_the_rerun_completed(runs: dict) -> None:
    assert sorted(kill.point for kill in runs["kills"]) == sorted(point.name for point in KILL_POINTS)
    assert (runs["interrupted"] / "results" / "summary.tsv").exists()


@pytest.mark.parametrize("output", ["results/search/ranking.tsv", "results/search/selection.json",
                                    "results/summary.tsv"])
def test_results_equal_those_of_the_uninterrupted_run(runs: dict, output: str) -> None:
    assert (runs["interrupted"] / output).read_bytes() == (runs["reference"] / output).read_bytes()


def test_killed_training_produces_the_same_weights(runs: dict) -> None:
    [kill] = [kill for kill in runs["kills"] if kill.point == "group mid-training"]
    model = f"results/train/{kill.job.name}/model.pt"
    from ats.runtime.checkpoints import load_checkpoint

    resumed = load_checkpoint(runs["interrupted"] / model)["state_dict"]
    uninterrupted = load_checkpoint(runs["reference"] / model)["state_dict"]
    assert resumed.keys() == uninterrupted.keys()
    assert all(resumed[name].equal(uninterrupted[name]) for name in resumed)


def test_nothing_finished_before_a_kill_was_computed_again(runs: dict) -> None:
    after = snapshot(runs["interrupted"])
    for kill in runs["kills"]:
        assert kill.finished_files, kill.job
        changed = [path for path, identity in kill.finished_files.items() if after[0].get(path) != identity]
        assert changed == [], f"rewritten after the kill in {kill.job}: {changed}"
        # Logs of finished jobs are untouched (logs are appended to, so a rerun would show); a job
        # killed by an earlier kill may not have finished yet.
        killed = {other.job for other in runs["kills"]}
        finished_logs = {path: text for path, text in kill.logs.items() if _job_of_log(path) not in killed}
        assert {path: after[1][path] for path in finished_logs} == finished_logs


def _job_of_log(log_path: str) -> Job:
    """``results/logs/score_shard/repeat-0/shard-0001.log`` -> ``Job("score_shard", "repeat-0/shard-0001")``."""
    rule, *name = Path(log_path).with_suffix("").parts[2:]
    return Job(rule, "/".join(name))


def test_the_killed_shard_was_scored_once_and_the_finished_ones_not_again(runs: dict) -> None:
    [kill] = [kill for kill in runs["kills"] if kill.point == "group mid-scoring"]
    shard = kill.job.name
    finished = sorted(re.findall(r"(repeat-\d+/shard-\d{4})\.h5", " ".join(kill.finished_files)))
    assert finished and shard not in finished
    logs = runs["interrupted"] / "results/logs/score_shard"
    for name in [*finished, shard]:
        assert _read(logs / f"{name}.log").count("scored 2 policies") == 1, name
    with h5py.File(runs["interrupted"] / f"results/search/scores/{shard}.h5") as handle:
        assert len(handle["policies"]) == 2


def test_the_killed_training_resumed_from_its_first_unfinished_epoch(runs: dict) -> None:
    [kill] = [kill for kill in runs["kills"] if kill.point == "group mid-training"]
    log = _read(runs["interrupted"] / f"results/logs/train_defence/{kill.job.name}.log")
    assert f"resuming from epoch 1 of {EPOCHS}" in log
    epochs_trained = [int(epoch) for epoch in re.findall(rf"epoch (\d+) \(last {EPOCHS - 1}\)", log)]
    assert epochs_trained == list(range(1, EPOCHS))  # epoch 0 was done before the kill, and kept


def test_a_changed_config_recomputes_exactly_what_depends_on_it(runs: dict, tmp_path: Path) -> None:
    """Every rule carries the fingerprint of its settings as a param: Snakemake reruns on a change."""
    workdir = runs["interrupted"]
    changed = yaml.safe_load((workdir / "override.yaml").read_text())
    changed["search"]["privacy"] = {"bins": 3}
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
    command = snakemake_command(workdir, "--dry-run")
    command[command.index(str(workdir / "override.yaml"))] = str(tmp_path / "changed.yaml")
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.MULTILINE))
    assert jobs["score_shard"] == "3" and "Params have changed since last execution" in result.stdout
    assert not {"prepare_dataset", "pretrain_search_model", "train_defence"} & jobs.keys()


def _copy(runs: dict, tmp_path: Path, name: str) -> Path:
    workdir = tmp_path / name
    shutil.copytree(runs["interrupted"], workdir, symlinks=True)
    return workdir


def _run(workdir: Path, *options: str, config: Path | None = None) -> subprocess.CompletedProcess:
    """Snakemake in ``workdir`` with the test's options, or with ``config`` in place of its override."""
    command = snakemake_command(workdir, *options)
    if config is not None:
        command[command.index(str(workdir / "override.yaml"))] = str(config)
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                          env={**os.environ, "PYTHONHASHSEED": "0"})


RECOVERY = re.compile(r"(\S+): ([^;\n]+?); recompute it with: snakemake --forcerun \1 <your usual options>")


def refusals(result: subprocess.CompletedProcess) -> dict[str, str]:
    """``{file: problem}`` for every file a failed run refused with the command that recomputes that file."""
    return dict(RECOVERY.findall(result.stdout + result.stderr))


def test_a_corrupted_cache_is_recomputed_by_the_command_its_error_prints(runs: dict, tmp_path: Path) -> None:
    """The shard is refused by the selection, which Snakemake then deletes the outputs of: deleting the
    shard alone would leave nothing to do. The printed command rescores it and finishes the run."""
    workdir = _copy(runs, tmp_path, "corrupted")
    name = "results/search/scores/repeat-0/shard-0000.h5"
    shard = workdir / name
    mtime_ns = shard.stat().st_mtime_ns
    with h5py.File(shard, "r") as handle:
        offset = handle["policy/0/spri"].id.get_offset()
    with shard.open("r+b") as handle:  # one flipped byte, mtime kept: Snakemake cannot tell
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(shard, ns=(mtime_ns, mtime_ns))
    result = _run(workdir, "--forcerun", "select_policies")
    assert result.returncode != 0
    assert refusals(result) == {name: "content checksum mismatch (corrupted file)"}
    assert not (workdir / "results/search/ranking.tsv").exists()  # deleted with the failed job

    recovered = _run(workdir, "--forcerun", name)
    assert recovered.returncode == 0, recovered.stderr[-3000:]
    for output in ("results/search/ranking.tsv", "results/search/selection.json", "results/summary.tsv"):
        assert (workdir / output).read_bytes() == (runs["reference"] / output).read_bytes(), output


def test_swapped_and_edited_files_are_refused_naming_the_file_and_its_recovery(runs: dict, tmp_path: Path) -> None:
    """Another defence's weights as a bare state_dict, another defence's attack file, an edited ranking."""
    from ats.runtime.checkpoints import load_checkpoint

    workdir = _copy(runs, tmp_path, "swapped")
    defences = sorted(path.parent.name for path in (workdir / "results/train").glob("*/model.pt"))
    victim, donor = "crop", next(defence for defence in defences if defence != "crop")
    attack = f"results/attack/{victim}/init/inversed.h5"
    shutil.copyfile(workdir / f"results/attack/{donor}/init/inversed.h5", workdir / attack)
    ranking = workdir / "results/search/ranking.tsv"
    ranking.write_text(ranking.read_text().replace("\tok\t", "\treference\t", 1))
    result = _run(workdir, "--keep-going")
    assert result.returncode != 0
    refused = refusals(result)
    assert refused[attack].startswith("made under a different configuration")
    assert refused["results/search/ranking.tsv"] == "content checksum mismatch (edited or corrupted file)"

    # The attack of the victim's final model is the job that reads it (and stops before the summary).
    model = f"results/train/{victim}/model.pt"
    torch.save(load_checkpoint(workdir / f"results/train/{donor}/model.pt")["state_dict"], workdir / model)
    result = _run(workdir, "--keep-going")
    assert result.returncode != 0
    assert refusals(result)[model].startswith("a plain state_dict, not a checkpoint of this workflow")


def test_reruns_need_no_write_access_beyond_the_owners(runs: dict, tmp_path: Path) -> None:
    """Root ignores write protection; without CAP_DAC_OVERRIDE (what every cluster user lacks) a
    read-only model, as earlier versions wrote, used to stop every rerun that needs a new one."""
    workdir = _copy(runs, tmp_path, "not-root")
    as_user = ["setpriv", "--bounding-set", "-dac_override", "--"]
    probe = workdir / "read-only"
    probe.write_text("")
    probe.chmod(0o444)
    denied = subprocess.run([*as_user, sys.executable, "-c", f"open({str(probe)!r}, 'a')"], capture_output=True,
                            text=True)
    assert denied.returncode != 0 and "PermissionError" in denied.stderr  # the capability is really gone
    for model in (workdir / "results/train").glob("*/model.pt"):
        model.chmod(0o444)
    changed = yaml.safe_load((workdir / "override.yaml").read_text())
    changed["training"]["epochs"] = EPOCHS + 1
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
    command = snakemake_command(workdir, "--dry-run")
    command[command.index(str(workdir / "override.yaml"))] = str(tmp_path / "changed.yaml")
    result = subprocess.run([*as_user, *command], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "ProtectedOutputException" not in result.stdout + result.stderr
    assert re.search(r"^train_defence\s+\d+$", result.stdout, re.MULTILINE)


def test_a_file_the_killed_master_left_is_never_mixed_with_a_later_config(runs: dict, tmp_path: Path) -> None:
    """The orphaned attack job's file has no Snakemake records, so a config change does not rerun it;
    the summary refuses it instead, and its printed command brings every attack to the new config."""
    [kill] = [kill for kill in runs["kills"] if kill.point == "master mid-attack"]
    workdir = _copy(runs, tmp_path, "after-master-kill")
    changed = yaml.safe_load((workdir / "override.yaml").read_text())
    changed["attack"] = {"iterations": 5}
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
    result = _run(workdir, "--rerun-incomplete", config=tmp_path / "changed.yaml")
    for _ in range(3):  # each refusal names one file; the orphan's is the only one expected
        if result.returncode == 0:
            break
        [(path, problem)] = refusals(result).items()
        assert path == f"results/attack/{kill.job.name}.h5" and "different configuration" in problem
        result = _run(workdir, "--rerun-incomplete", "--forcerun", path, config=tmp_path / "changed.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    for path in (workdir / "results/attack").rglob("*.h5"):
        with h5py.File(path) as handle:
            assert handle.attrs["iterations"] == 5, path
