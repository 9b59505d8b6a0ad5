"""The Slurm profile's commented --gres block, the real-scheduler test's list of GPU stages and the
rules that ask for a GPU stay in step: a GPU stage missing from the block would still ask for
`--gpus` on a cluster that rejects it."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "slurm" / "profile.yaml"
GRES_ENTRY = {"gpu": 0, "gres": "gpu:1"}


def rules_matching(pattern: str) -> set[str]:
    """Rules of the workflow with a line matching ``pattern`` in their body, read from the rule files."""
    rules: set[str] = set()
    for path in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        text = path.read_text(encoding="utf-8")
        headers = list(re.finditer(r"^\s*(?:rule|checkpoint)\s+(\w+)\s*:", text, re.MULTILINE))
        for header, following in zip(headers, headers[1:] + [None]):
            body = text[header.end():following.start() if following else len(text)]
            if re.search(pattern, body, re.MULTILINE):
                rules.add(header[1])
    return rules


def gpu_rules_of_the_workflow() -> set[str]:
    """Rules whose resources ask for a GPU (``gpu=N``, N > 0)."""
    return rules_matching(r"^\s*gpu\s*=\s*[1-9]")


def gres_block(text: str) -> dict:
    """The commented set-resources block of the profile's --gres section, uncommented (the same
    lines tests/slurm/run-slurm-test.sh uncomments)."""
    section = text[text.index("# --- clusters that take --gres"):]
    lines = section[section.index("# set-resources:"):].splitlines()
    block = []
    for line in lines:
        if not line.startswith("#"):
            break
        block.append(re.sub(r"^# ?", "", line))
    return yaml.safe_load("\n".join(block))


def test_the_workflow_has_gpu_rules():
    assert {"train_defence", "attack_defence", "score_shard"} <= gpu_rules_of_the_workflow()


def test_gres_block_asks_every_gpu_stage_for_gres_instead_of_gpus():
    block = gres_block(PROFILE.read_text(encoding="utf-8"))
    assert set(block) == {"set-resources"}
    assert set(block["set-resources"]) == gpu_rules_of_the_workflow()
    assert all(entry == GRES_ENTRY for entry in block["set-resources"].values())


def test_slurm_test_checks_every_gpu_stage():
    script = (ROOT / "tests" / "slurm" / "run-slurm-test.sh").read_text(encoding="utf-8")
    listed = re.search(r"^GPU_RULES=(\S+)$", script, re.MULTILINE)[1]
    assert set(listed.split(",")) == gpu_rules_of_the_workflow()


def test_docs_show_the_profile_block():
    docs = (ROOT / "docs" / "slurm.md").read_text(encoding="utf-8")
    shown = re.search(r"```yaml\n(set-resources:\n(?:  \w+: \{gpu: 0.*\n)+)```", docs)[1]
    assert yaml.safe_load(shown) == gres_block(PROFILE.read_text(encoding="utf-8"))


def test_profile_loads_with_the_gres_block_uncommented():
    """Uncommented in place, the block is valid YAML and the profile's only set-resources key."""
    text = PROFILE.read_text(encoding="utf-8")
    section_start = text.index("# --- clusters that take --gres")
    block_start = text.index("# set-resources:", section_start)
    block_end = text.index("\n\n", block_start)
    uncommented = re.sub(r"(?m)^# ?", "", text[block_start:block_end])
    profile = yaml.safe_load(text[:block_start] + uncommented + text[block_end:])
    assert profile["executor"] == "slurm"
    assert set(profile["set-resources"]) == gpu_rules_of_the_workflow()


def test_a_job_killed_at_its_time_limit_is_retried_with_more_time():
    """The profile retries failed jobs, and training, snapshot and attack jobs scale their runtime with
    the attempt (tests/slurm/run-slurm-test.sh runs a real time limit and its retry)."""
    profile = yaml.safe_load(PROFILE.read_text(encoding="utf-8"))
    assert profile["retries"] >= 1
    scaled = rules_matching(r"^\s*runtime=scaled_runtime\(\d+\),$")
    assert {"pretrain_search_model", "train_defence", "snapshot_defence", "attack_defence"} <= scaled
