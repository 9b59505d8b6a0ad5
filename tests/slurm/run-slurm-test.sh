#!/usr/bin/env bash
# `make test-slurm`: run the tiny test workflow on a real (local, single-node) Slurm scheduler.
#
#  1. start a throwaway Slurm with fake GPUs (tests/slurm/local-slurm.sh; installs the Debian
#     packages when missing);
#  2. start the test workflow (tests/config/test.yaml) locally, in the background: the reference
#     results. It runs while the Slurm run mostly waits for status polls;
#  3. run a job that fails on purpose under Slurm: Snakemake must exit non-zero in bounded time;
#  4. run the test workflow under `--profile profiles/slurm --profile tests/slurm/profile` (the user
#     profile, with the test cluster's differences layered on top) and check
#     (tests/slurm/check_slurm_run.py) that every non-local job ran under Slurm and logged its
#     SLURM_JOB_ID, that exactly the GPU stages asked for a GPU and saw CUDA_VISIBLE_DEVICES, and
#     that benchmarks timed every job;
#  5. rerun one job of each GPU stage with the user profile's commented --gres block uncommented
#     (a third profile), and check the same of those jobs, the GPU now requested by --gres;
#  6. check that the Slurm run's results, the rerun jobs' included, equal the local run's;
#  7. run a training job under Slurm, end it at a time limit after its first epoch, and check that
#     the profile's retry asked for twice the time, resumed, and made the model of an
#     uninterrupted local training (ATS_SLURM_TEST_ONLY=retry runs this case alone);
#  8. stop the daemons it started, by PID, and the background runs, whatever happened (trap).
#
# Skips (exit 0, with the reason) where a local Slurm cannot be started: not root, no apt-get and
# no Slurm, a real Slurm configuration present, or already inside a Slurm job. Every command runs
# under `timeout`, because a misconfigured Slurm run waits silently instead of failing.
#
# Environment: ATS_SLURM_TEST_DIR (scratch folder, default: a new /tmp/ats-slurm-test.*, removed
# after success), LOCAL_SLURM_STATE (see local-slurm.sh).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SNAKEMAKE=$REPO/.venv/bin/snakemake
PYTHON=$REPO/.venv/bin/python
LOCAL_SLURM=$REPO/tests/slurm/local-slurm.sh
SLURM_STATE=${LOCAL_SLURM_STATE:-/tmp/local-slurm}
SLURM_PROFILES=(--profile "$REPO/profiles/slurm" --profile "$REPO/tests/slurm/profile")
# The stages that must ask Slurm for a GPU (resources: gpu=1); every other Slurm job must not.
# tests/test_slurm_profile.py keeps this list, the rules and the profile's --gres block in step.
GPU_RULES=pretrain_search_model,score_shard,train_defence,snapshot_defence,attack_defence
# Time limits (s). A healthy run takes well under half of each; beyond it something hangs.
START_LIMIT=300
WORKFLOW_LIMIT=2000
FAILING_JOB_LIMIT=120

skip() {
  echo "test-slurm SKIPPED: $*"
  exit 0
}
log() { echo "test-slurm [$(date +%T)] $*"; }
fail() {
  echo "test-slurm FAILED: $*" >&2
  exit 1
}

[ "$(id -u)" -eq 0 ] || skip "starting a local Slurm needs root (CI runs as root)"
[ -x /usr/sbin/slurmctld ] || command -v apt-get >/dev/null \
  || skip "Slurm is not installed and apt-get is not available to install it"
if [ -e /etc/slurm/slurm.conf ] \
  && ! grep -q "written by tests/slurm/local-slurm.sh" /etc/slurm/slurm.conf; then
  skip "/etc/slurm/slurm.conf belongs to a real Slurm installation; not touching it"
fi
[ -z "${SLURM_JOB_ID:-}" ] || skip "running inside Slurm job $SLURM_JOB_ID"
[ -x "$SNAKEMAKE" ] || fail "$SNAKEMAKE is missing; run 'make setup' first"

SCRATCH=${ATS_SLURM_TEST_DIR:-$(mktemp -d /tmp/ats-slurm-test.XXXXXX)}
mkdir -p "$SCRATCH"
# The GPU evidence must come from Slurm, not from the caller's environment (sbatch exports it).
unset CUDA_VISIBLE_DEVICES

# Leave a local Slurm that ran before this test running (somebody's session); stop ours.
stop_slurm=yes
if [ -s "$SLURM_STATE/slurmctld.pid" ] \
  && kill -0 "$(cat "$SLURM_STATE/slurmctld.pid")" 2>/dev/null; then
  log "a local Slurm is already running; it will be left running"
  stop_slurm=no
fi
local_run_pid=
retry_pids=()
stopped_job_pids=()
cleanup() {
  for pid in "$local_run_pid" "${retry_pids[@]}"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid"  # timeout passes SIGTERM on to Snakemake
    fi
  done
  # The retry case's stopped job, where the test failed before Slurm's time limit ended it.
  for pid in "${stopped_job_pids[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ "$stop_slurm" = yes ]; then
    timeout 60 "$LOCAL_SLURM" stop
  fi
}
trap cleanup EXIT

# Prints the last lines of a failed run's output, then fails.
fail_run() {
  local output=$1 status=$2
  tail -n 40 "$output" >&2
  fail "$(basename "$output" .out) run exited with $status (full output: $output)"
}

# The first SLURM_JOB_ID a job log records (ats.runtime.device.log_runtime writes it).
slurm_job_of() { grep -o 'SLURM_JOB_ID=[0-9]*' "$1" 2>/dev/null | head -n 1 | cut -d= -f2; }

# A training job ends at its time limit after its first epoch (the test cuts the limit of the running
# job); the profile's retries submit it again with twice the runtime, it resumes from resume.pt, and
# its model equals that of an uninterrupted local training.
retry_after_time_limit() {
  local dir=$SCRATCH/retry target=results/train/none/model.pt
  local configs=("$REPO/tests/config/test.yaml" "$REPO/tests/slurm/longer-training.yaml")
  local state=$dir/slurm/results/train/none/resume.pt job_log=$dir/slurm/results/logs/train_defence/none.log
  mkdir -p "$dir"
  # The reference with the rule's 2 threads, as under Slurm: other thread counts add up differently.
  log "retry case: a 12-epoch training locally (the reference) and under Slurm"
  timeout -k 30 "$WORKFLOW_LIMIT" "$SNAKEMAKE" --snakefile "$REPO/Snakefile" --configfile "${configs[@]}" \
    --directory "$dir/local" --cores 2 "$target" >"$dir/local.out" 2>&1 &
  local local_pid=$!
  timeout -k 30 "$WORKFLOW_LIMIT" "$SNAKEMAKE" --snakefile "$REPO/Snakefile" --configfile "${configs[@]}" \
    --directory "$dir/slurm" "${SLURM_PROFILES[@]}" "$target" >"$dir/slurm.out" 2>&1 &
  local slurm_pid=$!
  retry_pids=("$local_pid" "$slurm_pid")
  until [ -s "$state" ]; do
    kill -0 "$slurm_pid" 2>/dev/null || fail "the Slurm training ended before its first epoch (see $dir/slurm.out)"
    sleep 1
  done
  local first_job
  first_job=$(slurm_job_of "$job_log")
  [ -n "$first_job" ] || fail "no SLURM_JOB_ID in $job_log"
  # slurmctld enforces time limits only on its periodic check (a test job ran 84 s against its 60 s
  # limit), and a fast host trains all 12 epochs in that time: the attempt then ends at its limit
  # after its training, and the retry starts a new one (the state is gone by then).
  # Stopping the job's processes makes the attempt end mid-training on every host, as a training
  # longer than its limit does; Slurm's time-limit kill ends stopped processes too.
  mapfile -t stopped_job_pids < <(scontrol listpids "$first_job" | awk 'NR > 1 { print $1 }')
  [ "${#stopped_job_pids[@]}" -gt 0 ] || fail "scontrol listpids found no processes of job $first_job"
  log "retry case: epoch 1 of job $first_job saved; stopping its ${#stopped_job_pids[@]} processes and cutting its time limit to one second"
  kill -STOP "${stopped_job_pids[@]}"
  scontrol update JobId="$first_job" TimeLimit=0:01
  local status=0
  wait "$slurm_pid" || status=$?
  [ "$status" -eq 0 ] || fail_run "$dir/slurm.out" "$status"
  scontrol show job "$first_job" | grep -q "JobState=TIMEOUT" \
    || fail "job $first_job did not end at its time limit: $(scontrol show job "$first_job" | grep -o 'JobState=[A-Z_]*')"
  stopped_job_pids=()  # ended by Slurm; the PIDs may belong to other processes from now on
  local second_job
  second_job=$(slurm_job_of "$job_log")
  [ -n "$second_job" ] && [ "$second_job" != "$first_job" ] || fail "no retry of job $first_job in $job_log"
  # The rule asks for 720 minutes per attempt: the retry, attempt 2, for 1440 (one day).
  scontrol show job "$second_job" | grep -q "TimeLimit=1-00:00:00" \
    || fail "the retry $second_job did not ask for twice the runtime: $(scontrol show job "$second_job" | grep -o 'TimeLimit=[^ ]*')"
  grep -q "resuming from epoch [1-9][0-9]* of 12" "$job_log" || fail "the retry did not resume (see $job_log)"
  status=0
  wait "$local_pid" || status=$?
  [ "$status" -eq 0 ] || fail_run "$dir/local.out" "$status"
  timeout 120 "$PYTHON" "$REPO/tests/slurm/check_slurm_run.py" compare "$dir/local" "$dir/slurm" \
    --ignore logs --ignore benchmarks
  log "retry case: job $first_job ended at its time limit, retry $second_job resumed with twice the time; same model"
}

started=$(date +%s)
log "starting the local Slurm (scratch: $SCRATCH)"
timeout -k 10 "$START_LIMIT" "$LOCAL_SLURM" start

if [ "${ATS_SLURM_TEST_ONLY:-}" = retry ]; then
  retry_after_time_limit
  log "PASSED (retry case only) in $(($(date +%s) - started)) s"
  [ -n "${ATS_SLURM_TEST_DIR:-}" ] || rm -rf "$SCRATCH"
  exit 0
fi

log "starting the local reference run in the background"
timeout -k 30 "$WORKFLOW_LIMIT" "$SNAKEMAKE" --snakefile "$REPO/Snakefile" \
  --configfile "$REPO/tests/config/test.yaml" --directory "$SCRATCH/local" --cores 2 \
  >"$SCRATCH/local.out" 2>&1 &
local_run_pid=$!

log "checking that a failing Slurm job fails the run in bounded time"
mkdir -p "$SCRATCH/failing"
cat >"$SCRATCH/failing/Snakefile" <<'EOF'
rule fail_on_purpose:
    output: "never-written.txt"
    log: "fail_on_purpose.log"
    resources: mem_mb=100, runtime=2
    shell: "echo SLURM_JOB_ID=${{SLURM_JOB_ID:-unset}} > {log}; exit 3"
EOF
failing_started=$(date +%s)
failing_status=0
# Without the profile's retries, which would submit it twice more: the bound is that of one failure.
timeout -k 10 "$FAILING_JOB_LIMIT" "$SNAKEMAKE" --snakefile "$SCRATCH/failing/Snakefile" \
  --directory "$SCRATCH/failing" "${SLURM_PROFILES[@]}" --retries 0 >"$SCRATCH/failing.out" 2>&1 \
  || failing_status=$?
failing_seconds=$(($(date +%s) - failing_started))
case $failing_status in
  0) fail "Snakemake exited 0 although its Slurm job failed (see $SCRATCH/failing.out)" ;;
  124 | 137) fail "Snakemake did not notice the failed Slurm job within $FAILING_JOB_LIMIT s" ;;
esac
grep -q "Error in rule fail_on_purpose" "$SCRATCH/failing.out" \
  || fail "Snakemake's output does not name the failed rule (see $SCRATCH/failing.out)"
grep -Eq "^SLURM_JOB_ID=[0-9]+$" "$SCRATCH/failing/fail_on_purpose.log" \
  || fail "the failing job did not run under Slurm (see $SCRATCH/failing/fail_on_purpose.log)"
log "the failing job made Snakemake exit $failing_status after $failing_seconds s"

log "running the test workflow under Slurm"
slurm_status=0
timeout -k 30 "$WORKFLOW_LIMIT" "$SNAKEMAKE" --snakefile "$REPO/Snakefile" \
  --configfile "$REPO/tests/config/test.yaml" --directory "$SCRATCH/slurm" "${SLURM_PROFILES[@]}" \
  >"$SCRATCH/slurm.out" 2>&1 || slurm_status=$?
[ "$slurm_status" -eq 0 ] || fail_run "$SCRATCH/slurm.out" "$slurm_status"
log "checking the Slurm jobs"
timeout 60 "$PYTHON" "$REPO/tests/slurm/check_slurm_run.py" jobs "$SCRATCH/slurm" \
  --gpu-rules "$GPU_RULES"

# The --gres variant: the user profile's commented --gres block, uncommented (exactly what users
# switch on), reruns one job of each GPU stage of the finished run. Their outputs, taken from the
# run's log, are the targets, so the test does not depend on the workflow's file layout.
mkdir -p "$SCRATCH/gres-profile"
awk '/^# --- clusters that take --gres/ { in_section = 1 }
     in_section && /^# set-resources:/ { in_block = 1 }
     in_block && !/^#/ { exit }
     in_block { sub(/^# ?/, ""); print }' "$REPO/profiles/slurm/profile.yaml" \
  >"$SCRATCH/gres-profile/profile.yaml"
grep -q 'gres: "gpu:1"' "$SCRATCH/gres-profile/profile.yaml" \
  || fail "no commented --gres block found in profiles/slurm/profile.yaml"
gres_targets=$(timeout 60 "$PYTHON" "$REPO/tests/slurm/check_slurm_run.py" outputs \
  "$SCRATCH/slurm" --rules "$GPU_RULES") || fail "the Slurm run did not run every GPU stage"
mapfile -t gres_targets <<<"$gres_targets"
log "rerunning ${#gres_targets[@]} GPU jobs with the profile's --gres block"
gres_status=0
timeout -k 30 "$WORKFLOW_LIMIT" "$SNAKEMAKE" --snakefile "$REPO/Snakefile" \
  --configfile "$REPO/tests/config/test.yaml" --directory "$SCRATCH/slurm" "${SLURM_PROFILES[@]}" \
  --profile "$SCRATCH/gres-profile" --forcerun "${gres_targets[@]}" -- "${gres_targets[@]}" \
  >"$SCRATCH/gres.out" 2>&1 || gres_status=$?
[ "$gres_status" -eq 0 ] || fail_run "$SCRATCH/gres.out" "$gres_status"
timeout 60 "$PYTHON" "$REPO/tests/slurm/check_slurm_run.py" jobs "$SCRATCH/slurm" \
  --gpu-rules "$GPU_RULES" --gpu-request gres

retry_after_time_limit

log "waiting for the local run"
local_status=0
wait "$local_run_pid" || local_status=$?
[ "$local_status" -eq 0 ] || fail_run "$SCRATCH/local.out" "$local_status"
log "comparing the results"
timeout 120 "$PYTHON" "$REPO/tests/slurm/check_slurm_run.py" compare "$SCRATCH/local" \
  "$SCRATCH/slurm" --ignore logs --ignore benchmarks

log "PASSED in $(($(date +%s) - started)) s"
[ -n "${ATS_SLURM_TEST_DIR:-}" ] || rm -rf "$SCRATCH"
