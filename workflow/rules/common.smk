# Helpers shared by all rules: config validation and the get_* input functions.
#
# Every Slurm job parses this file again, so it must stay cheap: no torch, only the torch-free
# modules ats.config, ats.settings, ats.policies, ats.case.normalisation and
# ats.runtime.fingerprint (a config naming a model.class imports torch with the user's module, to
# validate it), and ats.search.eval_set for the evaluation images' fingerprint (numpy and h5py).

import math
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import jsonschema
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from ats.case.architectures import model_name
from ats.case.normalisation import dataset_spec
from ats.config import (
    CONFIG_SCHEMA_PATH,
    ConfigError,
    check_config,
    describe_schema_error,
)
from ats.policies import candidate_policies
from ats.runtime.fingerprint import fingerprint
from ats.runtime.provenance import read_verified_json
from ats.search.eval_set import eval_set_fingerprint
from ats.settings import (
    AttackSettings,
    Experiment,
    PretrainSettings,
    ScoringSettings,
    SelectionSettings,
    TrainingSettings,
    attack_fingerprint,
    model_fingerprint,
    pretrain_fingerprint,
    selection_fingerprint,
    shard_fingerprint,
    train_fingerprint,
)
from ats.training.stages import FINAL, STAGE_PATTERN


def _validate_config():
    """Validate against the schema (filling defaults), then check what a schema cannot express.

    Errors name the offending key and the allowed values, and stop the run before any job starts.
    """
    try:
        validate(config, schema=str(CONFIG_SCHEMA_PATH))
    except WorkflowError as error:
        # Snakemake flattens the jsonschema error into text; the original is the exception context.
        if not isinstance(error.__context__, jsonschema.ValidationError):
            raise
        raise WorkflowError(describe_schema_error(error.__context__)) from None
    try:
        check_config(config)
    except ConfigError as error:
        raise WorkflowError(str(error)) from None


_validate_config()


def _unprotect_models_of_earlier_versions():
    """Earlier versions wrote models read-only (protected()); give their owner write access back,
    so that a rerun by a user who is not root can replace them (docs/robustness.md)."""
    for model in Path("results/train").glob("*/model.pt"):
        mode = model.stat().st_mode
        if not mode & stat.S_IWUSR and model.stat().st_uid == os.getuid():
            model.chmod(mode | stat.S_IWUSR)


_unprotect_models_of_earlier_versions()

DATASET = config["dataset"]["name"]
SEARCH = config["search"]
SEARCH_ENABLED = not SEARCH["pinned_policies"]
# What every run shares (data set, normalisation, model, seed), then the settings of each stage,
# read once from their config sections (ats.settings).
EXPERIMENT = Experiment.from_config(config)
MODEL = EXPERIMENT.model  # model.arch, or the user's model.class with its kwargs
TRAINING = TrainingSettings.from_config(config["training"])
PRETRAIN = PretrainSettings.from_config(SEARCH["pretrain"])
SCORING = ScoringSettings.from_config(SEARCH)
SELECTION = SelectionSettings.from_config(SEARCH["selection"])
ATTACK = AttackSettings.from_config(config["attack"])
NUM_CLASSES = dataset_spec(DATASET).num_classes
CHANNELS = dataset_spec(DATASET).channels
# Every rule's software environment under --software-deployment-method conda (relative to the rule
# files). It does not install the ats package: the Snakefile puts this checkout on the jobs' PYTHONPATH.
CONDA_ENVIRONMENT = "../../environment.yml"


wildcard_constraints:
    shard=r"\d{4}",
    stage=STAGE_PATTERN,
    defence=r"[A-Za-z0-9.+\-]+",
    attack=r"[A-Za-z0-9_\-]+",


def scaled_runtime(minutes):
    """A runtime (minutes) that grows with each attempt: under the Slurm profile's `retries`, a job
    killed at its time limit is submitted again with twice, then three times the time. Training
    resumes from its resume.pt, so the retry only trains the epochs that are left."""
    return lambda wildcards, attempt: minutes * attempt


# ---------------------------------------------------------------------------------------------
# Fingerprints: the config values that determine each cached artefact. A cache file records the
# fingerprint it was made under and is refused under another one.


def get_data_fingerprint():
    return fingerprint({"dataset": DATASET})


def get_pretrain_fingerprint():
    return pretrain_fingerprint(EXPERIMENT, PRETRAIN, TRAINING.test_images)


def get_eval_set_fingerprint():
    return eval_set_fingerprint(
        DATASET, privacy=SEARCH["privacy"], accuracy=SEARCH["accuracy"]
    )


def get_shard_fingerprint(wildcards):
    return shard_fingerprint(
        get_pretrain_fingerprint(),
        get_eval_set_fingerprint(),
        get_shard_policies(wildcards),
        int(wildcards.repeat),
    )


def get_shard_fingerprints(wildcards=None, repeats=None):
    """The fingerprints of get_shard_files(repeats=repeats), in the same order."""
    return [
        get_shard_fingerprint(SimpleNamespace(repeat=repeat, shard=shard))
        for repeat in (get_repeats() if repeats is None else repeats)
        for shard in get_shards()
    ]


def get_selection_fingerprint(wildcards=None):
    return selection_fingerprint(
        get_shard_fingerprints(), SELECTION, NUM_CLASSES, EXPERIMENT.seed
    )


def get_train_fingerprint(wildcards):
    return train_fingerprint(EXPERIMENT, wildcards.defence, TRAINING)


def get_model_fingerprint(wildcards):
    """The fingerprint of the model attacked at ``wildcards.stage``: the trained one, or a snapshot."""
    return model_fingerprint(get_train_fingerprint(wildcards), wildcards.stage)


def get_attack_fingerprint(wildcards):
    return attack_fingerprint(
        get_model_fingerprint(wildcards), wildcards.attack, ATTACK
    )


def get_attack_fingerprints(wildcards=None):
    """The fingerprints of get_attack_files(), in the same order, for the jobs that read them."""
    return [
        get_attack_fingerprint(
            SimpleNamespace(defence=defence, stage=stage, attack=attack)
        )
        for defence in get_defences()
        for stage in get_stages()
        for attack in get_attacks()
    ]


# ---------------------------------------------------------------------------------------------
# The search: candidates and shards are pure functions of the config, so Snakemake knows every
# shard at parse time. Shard i always holds candidates [i*size, (i+1)*size): growing the count
# only changes the last shard and appends new ones, so finished shards are never recomputed.


def get_dataset_file():
    return f"results/data/{DATASET}.h5"


def get_candidates():
    """All scored policies: the no-transform reference '', the random candidates, then extras."""
    extra = [""] + list(SEARCH["candidates"]["extra"])
    if SEARCH["candidates"]["single_ops"]:
        extra += [str(op) for op in range(50)]
    extra += list(config["training"]["validation_policies"])
    return candidate_policies(SEARCH["candidates"]["count"], config["seed"], extra)


def get_shards():
    size = SEARCH["shard_size"]
    return [f"{i:04d}" for i in range(math.ceil(len(get_candidates()) / size))]


def get_shard_policies(wildcards):
    size = SEARCH["shard_size"]
    start = int(wildcards.shard) * size
    return get_candidates()[start : start + size]


def get_repeats():
    """The repeats of the scoring, 0 first; repeat 0 alone is the single scoring of the search."""
    return list(range(SEARCH["repeats"]))


def get_shard_files(wildcards=None, repeats=None):
    """The score shards of ``repeats`` (default: every repeat), repeat by repeat."""
    return expand(
        "results/search/scores/repeat-{repeat}/shard-{shard}.h5",
        repeat=get_repeats() if repeats is None else repeats,
        shard=get_shards(),
    )


def get_first_repeat_shard_files(wildcards=None):
    """Repeat 0's shards: one copy of every policy's curves, for the figures that draw them."""
    return get_shard_files(repeats=[0])


def get_first_repeat_shard_fingerprints(wildcards=None):
    return get_shard_fingerprints(repeats=[0])


def get_search_model():
    return "results/search/pretrained/model.pt"


# ---------------------------------------------------------------------------------------------
# The evaluation: which defences are trained and attacked.


def get_chosen_policies(wildcards=None):
    """The policies the evaluation trains: pinned ones, or those the selection checkpoint chose."""
    if not SEARCH_ENABLED:
        return list(SEARCH["pinned_policies"])
    selection_file = checkpoints.select_policies.get().output.selection
    selection = read_verified_json(
        selection_file, expected_fingerprint=get_selection_fingerprint()
    )
    chosen = list(selection["top_k"])
    if selection.get("hybrid"):
        chosen.append(selection["hybrid"])
    return chosen


def get_defences(wildcards=None):
    """Every trained defence, each once, in a stable order: baselines, policies, gradient defences."""
    names = (
        list(config["training"]["baselines"])
        + get_chosen_policies()
        + list(config["training"]["validation_policies"])
        + list(config["training"]["gradient_defences"])
    )
    return list(dict.fromkeys(names))


def get_attacks():
    return list(config["attack"]["attacks"])


def get_train_metrics(wildcards=None):
    return expand("results/train/{defence}/metrics.json", defence=get_defences())


def get_train_histories(wildcards=None):
    return expand("results/train/{defence}/history.tsv", defence=get_defences())


def get_train_fingerprints(wildcards=None):
    """The fingerprints of get_train_metrics() and get_train_histories(), in the same order."""
    return [
        get_train_fingerprint(SimpleNamespace(defence=defence))
        for defence in get_defences()
    ]


def get_checkpoint_file(wildcards=None):
    """The file that the selection checkpoint is asked for (its first output, ranking.tsv), where
    the search chooses the policies: an input of every job whose params depend on that choice;
    none with pinned policies. Asked through ``checkpoints`` so that a finished selection does not
    count as an update on every later dry run."""
    return checkpoints.select_policies.get().output.ranking if SEARCH_ENABLED else []


def get_summary_fingerprint(wildcards=None):
    """summary.tsv: what it summarises (every attack file and training) and how."""
    return fingerprint(
        {
            "attacks": get_attack_fingerprints(wildcards),
            "training": get_train_fingerprints(wildcards),
            "seed": config["seed"],
            "lpips_backbone": config["report"]["lpips_backbone"],
        }
    )


def get_stages():
    return list(config["attack"]["stages"])


def get_attacked_model(wildcards):
    """The checkpoint that the attack of ``wildcards.stage`` reads."""
    if wildcards.stage == FINAL:
        return rules.train_defence.output.model
    return rules.snapshot_defence.output.model


def get_attack_files(wildcards=None):
    return expand(
        rules.attack_defence.output[0],
        defence=get_defences(),
        stage=get_stages(),
        attack=get_attacks(),
    )


def get_search_reports():
    if not SEARCH_ENABLED:
        return []
    figures = ["candidates.tsv", "spri_vs_sacc.svg", "gradsim_curves.svg"]
    if SEARCH["candidates"]["single_ops"]:
        figures.append("per_op_spri.svg")
    return expand("results/search/{figure}", figure=figures)


def get_final_outputs():
    return [
        "results/summary.tsv",
        "results/report/privacy_utility.svg",
        "results/report/reconstructions.png",
        "results/report/training_curves.svg",
        "results/report/psnr_distributions.svg",
        "results/report/spri_vs_psnr.svg",
        "results/report/findings.html",
        "results/report/leak_across_training.svg",
        "results/report/against_original.svg",
        "results/report/published_comparison.tsv",
    ] + get_search_reports()
