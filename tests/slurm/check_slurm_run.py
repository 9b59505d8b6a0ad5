"""Assertions of the real-scheduler test (tests/slurm/run-slurm-test.sh), in plain Python.

    check_slurm_run.py jobs RUN_DIR --gpu-rules a,b [--gpu-request gres]
        every non-local job ran under Slurm, GPU stages got a GPU (by sbatch --gpus, or by
        --gres with the profile's --gres block), benchmarks timed each job
    check_slurm_run.py compare LOCAL_DIR SLURM_DIR
        both runs wrote the same results
    check_slurm_run.py outputs RUN_DIR --rules a,b
        prints the first output of the first Slurm job of each rule: targets for a rerun

The evidence comes from three independent places: Snakemake's own log of the run (which jobs were
local, which Slurm job id each remote job got, which resources it declared), each job's log file
(the ``runtime ...`` line of ats.runtime.device.log_runtime, written inside the job) and Slurm's
record of the job (``scontrol show job``: what was requested). Exit status 1 with one line per
failed assertion; 0 when everything holds.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

JOB_HEADER = re.compile(r"^(?P<local>local)?(?:rule|checkpoint) (?P<rule>\w+):$")
JOB_FIELD = re.compile(r"^    (?P<key>\w+): (?P<value>.*)$")
SUBMITTED = re.compile(r"^Job (?P<jobid>\d+) has been submitted with SLURM jobid (?P<slurm>\d+) ")
UNSET = {"", "unset", "NoDevFiles"}
# Where ``scontrol show job`` records a GPU request: sbatch --gpus=N is per job, --gres=gpu:N per
# node.
GPU_REQUEST_FIELDS = {"gpus": "TresPerJob", "gres": "TresPerNode"}
# A ``gres=gpu:N`` or ``gres=gpu:<type>:N`` resource (``gres=gpu`` alone means one GPU).
GRES_GPU = re.compile(r"\bgres=gpu(?::[A-Za-z_][\w.]*)?(?::(?P<count>\d+))?(?![\w:])")


@dataclass
class Job:
    """One job as Snakemake's log of the run describes it."""

    rule: str
    local: bool
    fields: dict[str, str] = field(default_factory=dict)
    slurm_job_id: str | None = None

    @property
    def name(self) -> str:
        wildcards = self.fields.get("wildcards")
        return f"{self.rule}[{wildcards}]" if wildcards else self.rule

    def paths(self, key: str) -> list[str]:
        return [item.strip() for item in self.fields.get(key, "").split(",") if item.strip()]

    @property
    def gpus(self) -> int:
        """GPUs the job declares: ``gpu=N`` (sbatch --gpus) plus a ``gres=gpu...`` request."""
        resources = self.fields.get("resources", "")
        gpu = re.search(r"\bgpu=(\d+)", resources)
        gres = GRES_GPU.search(resources)
        return (int(gpu[1]) if gpu else 0) + (int(gres["count"] or 1) if gres else 0)


def parse_snakemake_log(log_path: Path) -> list[Job]:
    """The jobs of one run, from the ``rule X:`` blocks and the Slurm submission lines."""
    jobs_by_id: dict[str, Job] = {}
    current: Job | None = None
    for line in log_path.read_text().splitlines():
        header = JOB_HEADER.match(line)
        if header:
            current = Job(rule=header["rule"], local=bool(header["local"]))
            continue
        field_line = JOB_FIELD.match(line) if current is not None else None
        if field_line:
            current.fields[field_line["key"]] = field_line["value"]
            if field_line["key"] == "jobid":
                jobs_by_id[field_line["value"]] = current
            continue
        current = None
        submitted = SUBMITTED.match(line)
        if submitted and submitted["jobid"] in jobs_by_id:
            jobs_by_id[submitted["jobid"]].slurm_job_id = submitted["slurm"]
    return list(jobs_by_id.values())


def latest_snakemake_log(run_dir: Path) -> Path:
    logs = sorted((run_dir / ".snakemake" / "log").glob("*.snakemake.log"))
    if not logs:
        raise SystemExit(f"no Snakemake log under {run_dir}/.snakemake/log: did the run start?")
    return logs[-1]


def logged_values(log_text: str, variable: str) -> set[str]:
    """Every value ``variable=...`` takes in a job log (shell quotes removed)."""
    return {value.strip("'\"") for value in re.findall(rf"\b{variable}=(\S+)", log_text)}


def slurm_job_record(slurm_job_id: str) -> tuple[str, str]:
    """Slurm's one-line record of a job (kept MinJobAge seconds after it ends), and any error."""
    result = subprocess.run(
        ["scontrol", "show", "job", "--oneliner", slurm_job_id],
        capture_output=True, text=True, timeout=30, check=False,
    )
    return (result.stdout, "") if result.returncode == 0 else ("", result.stderr.strip())


def check_jobs(run_dir: Path, gpu_rules: set[str], gpu_request: str) -> list[str]:
    snakemake_log = latest_snakemake_log(run_dir)
    remote_jobs = [job for job in parse_snakemake_log(snakemake_log) if not job.local]
    if not remote_jobs:
        return [f"{snakemake_log}: no job was sent to Slurm"]
    problems = [problem for job in remote_jobs
                for problem in check_job(job, run_dir, gpu_rules, gpu_request)]
    ran_gpu_rules = {job.rule for job in remote_jobs if job.gpus > 0 and job.slurm_job_id}
    problems += [
        f"GPU stage {rule} did not run under Slurm" for rule in sorted(gpu_rules - ran_gpu_rules)
    ]
    print(
        f"jobs: {len(remote_jobs)} Slurm jobs checked "
        f"({sum(job.gpus > 0 for job in remote_jobs)} with a GPU by --{gpu_request}), "
        f"log {snakemake_log}"
    )
    return problems


def check_job(job: Job, run_dir: Path, gpu_rules: set[str], gpu_request: str) -> list[str]:
    """One non-local job: submitted, logged inside that Slurm job, GPU exactly where declared and
    requested the expected way (``gpu_request``: ``gpus`` or ``gres``)."""
    if job.slurm_job_id is None:
        return [f"{job.name}: not submitted to Slurm (no 'SLURM jobid' line)"]
    problems: list[str] = []
    declares_gpu = job.gpus > 0
    if declares_gpu != (job.rule in gpu_rules):
        problems.append(
            f"{job.name}: declares gpu={job.gpus}, but it is "
            f"{'' if job.rule in gpu_rules else 'not '}listed as a GPU stage"
        )
    logs = job.paths("log")
    if not logs:
        problems.append(f"{job.name}: the rule has no log: file")
    for log in logs:
        problems += check_job_log(job, run_dir / log, declares_gpu)
    record, error = slurm_job_record(job.slurm_job_id)
    if error:
        problems.append(f"{job.name}: scontrol show job {job.slurm_job_id}: {error}")
    else:
        requests = dict(re.findall(r"\b(TresPerJob|TresPerNode)=(\S+)", record))
        gpu_fields = {name for name, value in requests.items() if "gpu" in value}
        expected = {GPU_REQUEST_FIELDS[gpu_request]} if declares_gpu else set()
        if gpu_fields != expected:
            problems.append(
                f"{job.name}: Slurm job {job.slurm_job_id} requested {requests or 'nothing'}, "
                f"expected a GPU in {sorted(expected) or 'no field'} (request by --{gpu_request})"
            )
    for benchmark in job.paths("benchmark"):
        problems += check_benchmark(job, run_dir / benchmark)
    return problems


def check_job_log(job: Job, log_path: Path, declares_gpu: bool) -> list[str]:
    """The job's log was written inside its Slurm job, which had a GPU exactly if it asked."""
    if not log_path.exists():
        return [f"{job.name}: log {log_path} is missing"]
    text = log_path.read_text(errors="replace")
    problems: list[str] = []
    seen_ids = logged_values(text, "SLURM_JOB_ID")
    if seen_ids != {job.slurm_job_id}:
        problems.append(
            f"{job.name}: log {log_path} records SLURM_JOB_ID {sorted(seen_ids) or 'nowhere'}, "
            f"expected {job.slurm_job_id} (the job must log its runtime line)"
        )
    visible = logged_values(text, "CUDA_VISIBLE_DEVICES")
    if declares_gpu and (not visible or visible & UNSET):
        problems.append(
            f"{job.name}: GPU job saw no CUDA_VISIBLE_DEVICES (logged: {sorted(visible)})"
        )
    if not declares_gpu and visible - UNSET:
        problems.append(f"{job.name}: CPU job saw CUDA_VISIBLE_DEVICES={sorted(visible)}")
    return problems


def check_benchmark(job: Job, path: Path) -> list[str]:
    """A benchmark: file exists and records the job's wall time (column ``s``) in seconds."""
    if not path.exists():
        return [f"{job.name}: benchmark {path} is missing"]
    with path.open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    try:
        wall_times = [float(row["s"]) for row in rows]
    except (KeyError, ValueError):
        return [f"{job.name}: benchmark {path} has no wall time column 's'"]
    if not wall_times or min(wall_times) <= 0:
        return [f"{job.name}: benchmark {path} records no positive wall time: {wall_times}"]
    return []


# Wall-clock timings (``train_seconds``, a ``seconds`` column or attribute) differ between any two
# runs; everything else a stage writes is a function of the config and must be identical.
TIMING_NAME = re.compile(r"(^|[_/])seconds$")


# A provenance record (ats.runtime.provenance, ``<file>.provenance.json``) holds the checksum of its
# file's bytes, timings included; that file is compared by content itself, so its checksum is not.
PROVENANCE_SUFFIX = ".provenance.json"


def result_files(results: Path, ignored: list[str]) -> set[str]:
    files = {str(path.relative_to(results)) for path in results.rglob("*") if path.is_file()}
    return {name for name in files if not any(name.startswith(prefix + "/") for prefix in ignored)}


def load_h5(path: Path) -> dict[str, object]:
    """Every dataset (``name``) and attribute (``name@key``) of an HDF5 file."""
    items: dict[str, object] = {}
    with h5py.File(path, "r") as handle:
        def visit(name: str, obj: h5py.HLObject) -> None:
            if isinstance(obj, h5py.Dataset):
                items[name] = obj[()]
            for key, value in obj.attrs.items():
                items[f"{name}@{key}"] = value

        visit("", handle)  # the root's attributes: "@key"
        handle.visititems(visit)
    return items


def load_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def load_torch(path: Path) -> object:
    import torch  # only the checkpoints need it, and it takes seconds to import

    return torch.load(path, map_location="cpu", weights_only=True)


STRUCTURED_LOADERS = {".h5": load_h5, ".json": lambda path: json.loads(path.read_text()),
                      ".tsv": load_tsv, ".pt": load_torch}


def structural_differences(left: object, right: object, where: str = "") -> list[str]:
    """Where two loaded files differ, ignoring timing entries (see TIMING_NAME)."""
    if isinstance(left, dict) and isinstance(right, dict):
        keys = {key for key in left.keys() | right.keys()
                if not TIMING_NAME.search(str(key).rsplit("@", 1)[-1])}
        differences = [f"{where}/{key} only in one run" for key in sorted(keys, key=str)
                       if (key in left) != (key in right)]
        for key in sorted(keys & left.keys() & right.keys(), key=str):
            differences += structural_differences(left[key], right[key], f"{where}/{key}")
        return differences
    if isinstance(left, list) and isinstance(right, list):
        if len(left) != len(right):
            return [f"{where}: {len(left)} against {len(right)} entries"]
        return [difference for index, (a, b) in enumerate(zip(left, right))
                for difference in structural_differences(a, b, f"{where}[{index}]")]
    if isinstance(left, (float, np.generic, np.ndarray)) or hasattr(left, "numpy"):  # and tensors
        same = arrays_equal(as_array(left), as_array(right))
    else:
        same = left == right
    return [] if same else [f"{where} differs"]


def as_array(value: object) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def arrays_equal(left: np.ndarray, right: np.ndarray) -> bool:
    """Exact equality; NaN equals NaN (a score may be NaN in both runs)."""
    if left.dtype.kind in "fc" and right.dtype.kind in "fc":
        return np.array_equal(left, right, equal_nan=True)
    return np.array_equal(left, right)


def compare_results(local_dir: Path, slurm_dir: Path, ignored: list[str]) -> list[str]:
    expected_root, actual_root = local_dir / "results", slurm_dir / "results"
    expected, actual = result_files(expected_root, ignored), result_files(actual_root, ignored)
    problems = [f"only in the local run: {name}" for name in sorted(expected - actual)]
    problems += [f"only in the Slurm run: {name}" for name in sorted(actual - expected)]
    for name in sorted(expected & actual):
        left, right = expected_root / name, actual_root / name
        if left.read_bytes() == right.read_bytes():
            continue
        loader = STRUCTURED_LOADERS.get(left.suffix)
        if name.endswith(PROVENANCE_SUFFIX):
            records = ({key: value for key, value in loader(path).items() if key != "sha256"} for path in (left, right))
            differences = structural_differences(*records)
        else:
            differences = (structural_differences(loader(left), loader(right)) if loader
                           else ["contents differ"])
        if differences:
            problems.append(f"{name}: {'; '.join(differences[:5])}")
    print(f"compare: {len(expected & actual)} result files compared (ignoring {ignored})")
    return problems


def first_outputs(run_dir: Path, rules: list[str]) -> list[str]:
    """Prints the first output file of the first Slurm job of each rule, in the run's order; the
    problems are the rules that had none. Lets a test rerun one job per rule without knowing the
    workflow's file layout."""
    remote_jobs = [job for job in parse_snakemake_log(latest_snakemake_log(run_dir))
                   if not job.local and job.slurm_job_id and job.paths("output")]
    problems = []
    for rule in rules:
        job = next((job for job in remote_jobs if job.rule == rule), None)
        if job is None:
            problems.append(f"no Slurm job of rule {rule} with an output")
        else:
            print(job.paths("output")[0])
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    jobs = commands.add_parser("jobs", help="every non-local job ran under Slurm")
    jobs.add_argument("run_dir", type=Path, help="working directory of the Slurm run")
    jobs.add_argument("--gpu-rules", required=True, help="comma-separated GPU stages")
    jobs.add_argument(
        "--gpu-request", choices=sorted(GPU_REQUEST_FIELDS), default="gpus",
        help="how GPU stages ask Slurm for their GPU: sbatch --gpus (default) or --gres",
    )
    compare = commands.add_parser("compare", help="a Slurm run's results equal a local run's")
    compare.add_argument("local_dir", type=Path)
    compare.add_argument("slurm_dir", type=Path)
    compare.add_argument(
        "--ignore", action="append", default=[],
        help="folder under results/ that may differ (logs, benchmarks); repeatable",
    )
    outputs = commands.add_parser("outputs", help="one output file of each rule's first job")
    outputs.add_argument("run_dir", type=Path, help="working directory of the Slurm run")
    outputs.add_argument("--rules", required=True, help="comma-separated rules")
    args = parser.parse_args(argv)
    if args.command == "jobs":
        gpu_rules = {rule for rule in args.gpu_rules.split(",") if rule}
        problems = check_jobs(args.run_dir, gpu_rules, args.gpu_request)
    elif args.command == "outputs":
        problems = first_outputs(args.run_dir, [rule for rule in args.rules.split(",") if rule])
    else:
        problems = compare_results(args.local_dir, args.slurm_dir, args.ignore)
    for problem in problems:
        print(f"FAIL {args.command}: {problem}", file=sys.stderr)
    if not problems and args.command != "outputs":  # outputs prints file names only
        print(f"{args.command}: OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
