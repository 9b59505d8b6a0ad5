"""Device choice and GPU slot leases, tested without any GPU.

Leases are plain ``flock`` locks on files, so two open file descriptions (or two processes) stand in
for two jobs. resolve_device's CUDA path is exercised with torch.cuda's queries replaced by fakes.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from ats.runtime import device as device_module
from ats.runtime.device import (
    GpuLease,
    default_lock_dir,
    describe_runtime,
    format_runtime,
    lease_gpu_slot,
    resolve_device,
    visible_device_ids,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

# A job in a separate process: lease a slot, report it, hold it until stdin closes or we are killed.
HOLDER_SCRIPT = """
import sys
from ats.runtime.device import lease_gpu_slot
lease = lease_gpu_slot(sys.argv[1].split(","), sys.argv[2], timeout_s=float(sys.argv[3]))
print(lease.index, lease.device_id, flush=True)
sys.stdin.read()
"""


@pytest.fixture
def leases():
    """Collects leases made in a test and releases them afterwards."""
    held: list[GpuLease] = []
    yield held
    for lease in held:
        lease.release()


@pytest.fixture
def no_process_lease(monkeypatch):
    """Each test starts without this process's cached lease and frees the one it made."""
    monkeypatch.setattr(device_module, "_process_lease", None)
    yield
    if device_module._process_lease is not None:
        device_module._process_lease.release()


def start_holder(devices: str, lock_dir: Path, timeout_s: float = 10) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, devices, str(lock_dir), str(timeout_s)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )


def read_holder_slot(holder: subprocess.Popen) -> tuple[int, str]:
    index, device_id = holder.stdout.readline().split()
    return int(index), device_id


def fake_cuda(monkeypatch, device_count: int) -> list[int]:
    """Make torch believe ``device_count`` GPUs exist; returns the indices passed to set_device."""
    current_devices: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: device_count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: device_count)
    monkeypatch.setattr(torch.cuda, "set_device", current_devices.append)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    return current_devices


# --- lease_gpu_slot: the pure core ----------------------------------------------------------------


def test_two_leases_get_different_slots_and_a_third_times_out(tmp_path, leases):
    leases.append(lease_gpu_slot(["0", "1"], tmp_path, timeout_s=0))
    leases.append(lease_gpu_slot(["0", "1"], tmp_path, timeout_s=0))
    assert [(lease.index, lease.device_id) for lease in leases] == [(0, "0"), (1, "1")]
    with pytest.raises(TimeoutError, match=rf"all 2 GPU slots \(0,1\).*{tmp_path}"):
        lease_gpu_slot(["0", "1"], tmp_path, timeout_s=0.2, poll_interval_s=0.05)


def test_concurrent_processes_get_different_slots(tmp_path):
    holders = [start_holder("0,1", tmp_path) for _ in range(2)]
    try:
        slots = sorted(read_holder_slot(holder) for holder in holders)
    finally:
        for holder in holders:
            holder.communicate(timeout=10)
    assert slots == [(0, "0"), (1, "1")]


def test_slot_is_freed_when_the_holding_process_dies(tmp_path, leases):
    holder = start_holder("0", tmp_path)
    try:
        assert read_holder_slot(holder) == (0, "0")
        with pytest.raises(TimeoutError):
            lease_gpu_slot(["0"], tmp_path, timeout_s=0)
    finally:
        holder.send_signal(signal.SIGKILL)  # no cleanup code runs: only the kernel frees the lock
        holder.wait(timeout=10)
    leases.append(lease_gpu_slot(["0"], tmp_path, timeout_s=0))
    assert leases[0].index == 0


def test_waiting_lease_gets_the_slot_once_it_is_released(tmp_path, leases):
    first = lease_gpu_slot(["7"], tmp_path, timeout_s=0)
    threading.Timer(0.3, first.release).start()
    started = time.monotonic()
    leases.append(lease_gpu_slot(["7"], tmp_path, timeout_s=10, poll_interval_s=0.05))
    assert leases[0].device_id == "7"
    assert 0.2 < time.monotonic() - started < 5


def test_lock_files_are_named_after_device_ids(tmp_path, leases):
    leases.append(lease_gpu_slot(["GPU-1f2e/3", "MIG-4:0"], tmp_path, timeout_s=0))
    leases.append(lease_gpu_slot(["GPU-1f2e/3", "MIG-4:0"], tmp_path, timeout_s=0))
    assert [lease.lock_file.name for lease in leases] == ["gpu-GPU-1f2e_3.lock", "gpu-MIG-4_0.lock"]
    assert f"pid={os.getpid()}" in leases[0].lock_file.read_text()


def test_leases_name_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="visible_devices is empty"):
        lease_gpu_slot([], tmp_path, timeout_s=0)
    with pytest.raises(ValueError, match=r"\['1'\] more than once"):
        lease_gpu_slot(["1", "2", "1"], tmp_path, timeout_s=0)
    with pytest.raises(ValueError, match="timeout_s must be >= 0"):
        lease_gpu_slot(["0"], tmp_path, timeout_s=-1)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OSError, match=f"cannot create the GPU lock folder {blocker}/locks"):
        lease_gpu_slot(["0"], blocker / "locks", timeout_s=0)


# --- which devices are visible, and where the locks live -----------------------------------------


def test_visible_device_ids_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_device_ids(2) == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5")
    assert visible_device_ids(2) == ["3", "5"]
    # CUDA stops at the first invalid entry; the device count says how many it kept.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,bogus")
    assert visible_device_ids(2) == ["3", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_device_ids(0) == []


def test_default_lock_dir_is_per_user_and_per_slurm_job(monkeypatch, tmp_path):
    monkeypatch.delenv("ATS_GPU_LOCK_DIR", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert default_lock_dir() == Path(f"/tmp/ats-gpu-locks-{os.getuid()}")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert default_lock_dir() == Path(f"/tmp/ats-gpu-locks-{os.getuid()}/slurm-job-42")
    monkeypatch.setenv("ATS_GPU_LOCK_DIR", str(tmp_path))
    assert default_lock_dir() == tmp_path


# --- resolve_device ----------------------------------------------------------------------------


def test_auto_falls_back_to_the_cpu_with_a_warning(monkeypatch, caplog):
    fake_cuda(monkeypatch, device_count=0)
    with caplog.at_level(logging.INFO, logger="ats.runtime.device"):
        assert resolve_device("auto") == torch.device("cpu")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "no CUDA device found; falling back to the CPU" in warnings[0]
    assert any(r.getMessage().startswith("runtime ") and "device=cpu" in r.getMessage()
               for r in caplog.records)


def test_cpu_is_used_without_asking_cuda(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: pytest.fail("CUDA was queried"))
    with caplog.at_level(logging.WARNING):
        assert resolve_device("cpu") == torch.device("cpu")
    assert not caplog.records


def test_cuda_without_a_device_is_an_error(monkeypatch):
    fake_cuda(monkeypatch, device_count=0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(RuntimeError, match=r"'cuda' was requested.*CUDA_VISIBLE_DEVICES=0"):
        resolve_device("cuda")


def test_unknown_device_spec_is_named():
    with pytest.raises(ValueError, match="auto, cpu, cuda; got 'gpu'"):
        resolve_device("gpu")


def test_several_gpus_lease_within_cuda_visible_devices(monkeypatch, tmp_path, leases,
                                                        no_process_lease):
    current_devices = fake_cuda(monkeypatch, device_count=2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    leases.append(lease_gpu_slot(["3"], tmp_path, timeout_s=0))  # another job holds GPU 3
    device = resolve_device("auto", lock_dir=tmp_path, lease_timeout_s=0)
    assert device == torch.device("cuda", 1)
    assert current_devices == [1]
    assert device_module._process_lease.lock_file == tmp_path / "gpu-5.lock"
    # A second call in the same process keeps its GPU rather than leasing another one.
    assert resolve_device("cuda", lock_dir=tmp_path, lease_timeout_s=0) == device


def test_a_single_visible_gpu_needs_no_lease(monkeypatch, tmp_path, no_process_lease):
    fake_cuda(monkeypatch, device_count=1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")  # as Slurm sets it for --gpus=1
    assert resolve_device("cuda", lock_dir=tmp_path) == torch.device("cuda", 0)
    assert device_module._process_lease is None
    assert list(tmp_path.iterdir()) == []


def test_bad_lease_timeout_in_the_environment_is_named(monkeypatch, tmp_path, no_process_lease):
    fake_cuda(monkeypatch, device_count=2)
    monkeypatch.setenv("ATS_GPU_LEASE_TIMEOUT_S", "ten")
    with pytest.raises(ValueError, match="ATS_GPU_LEASE_TIMEOUT_S must be a number.*'ten'"):
        resolve_device("auto", lock_dir=tmp_path)


# --- what the logs show ------------------------------------------------------------------------


def test_runtime_description_round_trips_through_the_log_line(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    info = describe_runtime(torch.device("cpu"))
    assert info["SLURM_JOB_ID"] == "1234"
    assert info["device"] == "cpu"
    assert info["torch"] == torch.__version__
    assert info["threads"] == torch.get_num_threads()
    fields = dict(item.split("=", 1) for item in shlex.split(format_runtime(info)))
    assert fields["SLURM_JOB_ID"] == "1234"
    assert fields["CUDA_VISIBLE_DEVICES"] == "unset"
    assert set(fields) == set(info)
