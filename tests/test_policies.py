"""The 50 ops, policy strings and the candidate sampler (ats.policies)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ats.policies import (
    NUM_OPERATIONS,
    OPERATIONS,
    SIGNED_TRANSFORMS,
    TRANSFORM_MAGNITUDES,
    PolicyError,
    candidate_policies,
    describe_operation,
    describe_policy,
    effective_parameter,
    format_policy,
    parse_policy,
)

HYPOTHESIS = settings(max_examples=50, deadline=None)


def test_module_is_torch_and_numpy_free() -> None:
    """The Snakemake parser imports ats.policies on every job; it must stay light."""
    code = "import sys, ats.policies; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_magnitudes_are_bit_identical_to_the_original_numpy_ranges() -> None:
    expected = {
        "shearX": np.linspace(0, 0.3, 10), "shearY": np.linspace(0, 0.3, 10),
        "translateX": np.linspace(0, 150 / 331, 10), "translateY": np.linspace(0, 150 / 331, 10),
        "rotate": np.linspace(0, 30, 10), "color": np.linspace(0.0, 0.5, 10),
        "posterize": np.round(np.linspace(8, 4, 10), 0).astype(int), "solarize": np.linspace(256, 0, 10),
        "contrast": np.linspace(0.0, 0.5, 10), "sharpness": np.linspace(0.0, 0.5, 10),
        "brightness": np.linspace(0.0, 0.5, 10),
    }
    for transform, values in expected.items():
        assert TRANSFORM_MAGNITUDES[transform] == tuple(float(v) for v in values), transform
    assert list(TRANSFORM_MAGNITUDES["posterize"]) == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]


def test_the_fifty_ops_match_the_original_list() -> None:
    assert NUM_OPERATIONS == len(OPERATIONS) == 50
    spot_checks = {0: ("invert", 7), 1: ("contrast", 6), 2: ("rotate", 2), 3: ("translateX", 9),
                   6: ("shearY", 2), 11: ("posterize", 5), 18: ("contrast", 7), 28: ("solarize", 0),
                   29: ("invert", 0), 37: ("solarize", 4), 39: ("color", 0), 43: ("translateY", 3),
                   49: ("autocontrast", 1)}
    for index, (transform, magnitude_index) in spot_checks.items():
        assert (OPERATIONS[index].transform, OPERATIONS[index].magnitude_index) == (transform, magnitude_index)
    assert OPERATIONS[29].probability == 0.0  # recorded, ignored: op 29 still inverts
    counts = Counter(op.transform for op in OPERATIONS)
    assert counts["equalize"] == 9 and counts["autocontrast"] == 7 and counts["invert"] == 3
    assert "shearX" not in counts  # defined in the ranges, unused by the list


def test_effective_parameters_for_32_pixel_images() -> None:
    assert effective_parameter(3) == pytest.approx(14.5015, abs=1e-4)  # translateX m9
    assert effective_parameter(7) == pytest.approx(3.2226, abs=1e-4)  # translateY m2
    assert effective_parameter(2) == pytest.approx(20 / 3)  # rotate m2, degrees
    assert effective_parameter(1) == pytest.approx(1 / 3)  # contrast factor 1 ± 1/3
    assert effective_parameter(11) == 6  # posterize keeps 6 bits
    assert effective_parameter(28) == 256  # solarize threshold 256: identity
    assert effective_parameter(37) == pytest.approx(142.22, abs=0.01)
    assert effective_parameter(9) is None  # equalize has no magnitude
    assert effective_parameter(3, image_size=28) == pytest.approx(0.45317 * 28, abs=1e-3)
    assert OPERATIONS[3].signed and not OPERATIONS[2].signed  # rotation has no random sign
    assert {"shearX", "shearY", "translateX", "translateY",
                                 "color", "contrast", "sharpness", "brightness"} == SIGNED_TRANSFORMS


def test_descriptions() -> None:
    assert describe_policy("3-1-7") == "translateX ±14.5px → contrast ×(1±0.333) → translateY ±3.2px"
    assert describe_policy("") == "no transformation"
    assert describe_policy("0+2") == "[invert] | [rotate 6.7° CCW]"
    assert describe_operation(11) == "posterize 6 bits"
    assert describe_operation(28) == "solarize ≥256.0 (identity)"
    assert describe_operation(39) == "color ×(1±0.000) (identity)"


@pytest.mark.parametrize(("text", "policy"), [
    ("", ()),
    ("0", ((0,),)),
    ("3-1-7", ((3, 1, 7),)),
    ("3-1-7+43-18-18", ((3, 1, 7), (43, 18, 18))),
    ("49-0-10-20", ((49, 0, 10, 20),)),
    ("5+5", ((5,), (5,))),
])
def test_parse_and_format_examples(text: str, policy: tuple) -> None:
    assert parse_policy(text) == policy
    assert format_policy(policy) == text


@pytest.mark.parametrize("text", [
    "3--1", "a-b", "3-1+", "+3", " 3", "3 ", "-1", "50", "3-50", "007", "3-07", "3.0", "3_1",
    "+", "-", "3++1", "１", "3-1-7+", "٣",
])
def test_malformed_policies_are_rejected_naming_the_string(text: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    assert repr(text) in str(caught.value)


def test_non_strings_and_bad_tuples_are_rejected() -> None:
    with pytest.raises(PolicyError, match="must be a string"):
        parse_policy(37)  # type: ignore[arg-type]
    for bad in [((),), ((50,),), ((-1,),), ([3],), ((True,),), "3-1"]:
        with pytest.raises(PolicyError) as caught:
            format_policy(bad)  # type: ignore[arg-type]
        assert repr(bad) in str(caught.value)


policies = st.lists(st.lists(st.integers(0, NUM_OPERATIONS - 1), min_size=1, max_size=5).map(tuple),
                    max_size=4).map(tuple)


@HYPOTHESIS
@given(policies)
def test_format_then_parse_round_trips(policy: tuple) -> None:
    assert parse_policy(format_policy(policy)) == policy


@HYPOTHESIS
@given(st.one_of(st.text(max_size=20), st.text(alphabet="0123456789-+ ", max_size=20)))
def test_any_string_parses_canonically_or_raises_policy_error_naming_it(text: str) -> None:
    try:
        policy = parse_policy(text)
    except PolicyError as error:
        assert repr(text) in str(error)
    else:
        assert format_policy(policy) == text


def test_candidates_are_valid_distinct_and_seeded() -> None:
    candidates = candidate_policies(400, seed=7)
    assert len(candidates) == len(set(candidates)) == 400
    parsed = [parse_policy(text) for text in candidates]
    assert all(len(policy) == 1 and 1 <= len(policy[0]) <= 3 for policy in parsed)
    assert candidates == candidate_policies(400, seed=7)
    assert candidates != candidate_policies(400, seed=8)
    lengths = Counter(len(policy[0]) for policy in parsed)
    # Per draw P(3 ops) = (50/51)³ ≈ 94.2 %; the rest have 2 ops (1-op candidates are rare).
    assert 0.90 < lengths[3] / 400 < 0.98
    ops = Counter(index for policy in parsed for index in policy[0])
    assert set(ops) == set(range(50))  # op 50 (the original's off-by-one) never appears


def test_growing_the_count_keeps_earlier_candidates_as_a_prefix() -> None:
    small, large = candidate_policies(50, seed=3), candidate_policies(300, seed=3)
    assert large[:50] == small


def test_extra_policies_are_appended_once_and_validated() -> None:
    sampled = candidate_policies(20, seed=1)
    with_extra = candidate_policies(20, seed=1, extra=["", "3-1-7", sampled[4], "3-1-7+43-18-18", "3-1-7"])
    assert with_extra[:20] == sampled
    assert with_extra[20:] == ["", "3-1-7", "3-1-7+43-18-18"]
    with pytest.raises(PolicyError, match="'3-1-50'"):
        candidate_policies(20, seed=1, extra=["3-1-50"])
    with pytest.raises(ValueError, match="-1"):
        candidate_policies(-1, seed=1)
    assert candidate_policies(0, seed=1) == []
