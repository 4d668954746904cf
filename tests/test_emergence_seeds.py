"""Seed-level CIs (issue 15): the t interval over seeds against scipy's t distribution, and the
emergence stage's summary of a checkpoint built by hand: per dictionary the medians' CIs and
the differences between dictionaries paired by seed, each value counted here by hand; a
checkpoint from before the per-seed matrix still summarises (the emergence layer then has
seed 0 only)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from crosslayer.emergence import CLASSES, paired_difference, seed_ci
from crosslayer.emergence.taxonomy import LONG, POSITIONAL, SHORT, TOKEN
from crosslayer.experiments.study_a.emergence import sample_features, summarise
from crosslayer.experiments.study_a.run import Run
from tests.test_study_a import tiny_config


def _t_interval(x: list[float], bounds: tuple[float, float] | None = None) -> list[float]:
    """scipy's t interval of the mean of ``x``, cut to ``bounds``."""
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    if bounds is not None:
        lo, hi = max(bounds[0], lo), min(bounds[1], hi)
    return [float(lo), float(hi)]


def test_seed_ci_is_the_t_interval_over_seeds() -> None:
    x = [0.2, 0.35, 0.1, 0.5]
    got = seed_ci(x)
    # by hand: mean, sd with ddof 1, the t quantile with S - 1 degrees of freedom
    mean = sum(x) / 4
    sd = (sum((v - mean) ** 2 for v in x) / 3) ** 0.5
    half = stats.t.ppf(0.975, 3) * sd / 4**0.5
    assert got["n_seeds"] == 4 and got["mean"] == pytest.approx(0.2875)
    assert got["ci95"] == pytest.approx([mean - half, mean + half])
    assert got["ci95"] == pytest.approx(_t_interval(x))
    assert "note" not in got
    # cut to the quantity's range: three shares near 0 reach below it
    near0 = seed_ci([0.01, 0.02, 0.3], bounds=(0.0, 1.0))
    assert near0["ci95"][0] == 0.0
    assert near0["ci95"][1] == pytest.approx(_t_interval([0.01, 0.02, 0.3])[1])
    assert _t_interval([0.01, 0.02, 0.3])[0] < 0
    # seeds without a value are left out and counted
    gaps = seed_ci([1.0, None, float("nan"), 3.0])
    assert gaps["n_seeds"] == 2 and gaps["n_missing"] == 2 and gaps["mean"] == 2.0
    assert gaps["ci95"] == pytest.approx([2.0 - 12.7062047, 2.0 + 12.7062047])  # t_{.975,1}
    one = seed_ci([0.4])
    assert one["mean"] == 0.4 and one["ci95"] is None and "one seed" in one["note"]
    none = seed_ci([])
    assert none["n_seeds"] == 0 and none["mean"] is None and none["ci95"] is None
    same = seed_ci([0.3, 0.3, 0.3])
    assert same["ci95"] == pytest.approx([0.3, 0.3])


def test_paired_difference_pairs_by_seed() -> None:
    a = {0: 1.0, 1: 2.0, 2: None, 3: 5.0}
    b = {1: 1.0, 0: 0.5, 2: 1.0, 4: 3.0}  # another order; seed 2 missing in a, 3 and 4 alone
    d = paired_difference(a, b, bounds=(-1.0, 1.0))
    assert d["seeds"] == [0, 1] and d["n_seeds"] == 2
    assert d["mean"] == pytest.approx(0.75)  # (1 - 0.5 + 2 - 1) / 2
    assert d["ci95"] == pytest.approx(_t_interval([0.5, 1.0], (-1.0, 1.0)))
    assert d["ci95"] == [-1.0, 1.0]  # two seeds: t_{.975,1} = 12.7, cut to the range


def test_sample_features_is_a_seeded_subset() -> None:
    scored = np.array([3, 5, 8, 13, 21, 34])
    a = sample_features(scored, 4, np.random.default_rng(7))
    assert a.tolist() == sorted(np.random.default_rng(7).choice(scored, 4, replace=False))
    assert set(a) <= set(scored) and len(set(a)) == 4
    assert sample_features(scored, 10, np.random.default_rng(7)).tolist() == scored.tolist()
    assert sample_features(np.array([], dtype=np.int64), 5, np.random.default_rng(0)).size == 0


# --- the stage's summary on a checkpoint built by hand -------------------------------------

HOOKS = ["hook_embed", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
# taxonomy scores that make each class (nulls 0; default thresholds 0.5)
CLASS_SCORES = {TOKEN: (0.9, 0.1, 0.1), POSITIONAL: (0.1, 0.9, 0.1), SHORT: (0.1, 0.1, 0.9),
                LONG: (0.1, 0.1, 0.1)}  # fmt: skip
# R² rows over the three layers (frac 0.9): emerging at embed (block -1), at block 1, never
ROWS = {"embed": [0.6, 0.6, 0.6], "b1": [0.1, 0.5, 0.6], "never": [-0.1, -0.2, -0.3]}


def _scores(classes: list[str]) -> dict[str, list[float]]:
    t, p, c = zip(*(CLASS_SCORES[k] for k in classes), strict=True)
    zero = [0.0] * len(classes)
    return {"token_r2": list(t), "token_null": zero, "position_r2": list(p),
            "position_null": zero, "context_r2": list(c)}  # fmt: skip


def _seed0(classes: list[str], entropy: list[float], share: list[float], rows: list[str]) -> dict:
    """Seed 0 of one dictionary: its scored features, plus one unscored feature whose
    top-token measures (9.9 bits, 0.99) must stay out of the medians."""
    n = len(classes)
    r2 = [ROWS[r] for r in rows]
    return {
        "input": "target",
        "n_features": n + 1,
        "status": ["ok"] * n + ["too few positives"],
        "n_pos": [50] * n + [1],
        "scored": list(range(n)),
        "r2": r2,
        "auroc": [[0.5 + v for v in r] for r in r2],
        "alpha": [[1.0] * 3 for _ in r2],
        **_scores(classes),
        "token_entropy": [*entropy, 9.9],
        "top_token_share": [*share, 0.99],
        "top_token": [1] * (n + 1),
        "n_top": [50] * n + [1],
        "seeds": [],
    }


def _seed(k: int, classes: list[str], entropy: list[float], share: list[float],
          sampled: list[int], rows: list[str]) -> dict:  # fmt: skip
    n = len(classes)
    r2 = [ROWS[r] for r in rows]
    return {"seed": k, "n_features": n + 1, "scored": list(range(n)), **_scores(classes),
            "token_entropy": [*entropy, 9.9], "top_token_share": [*share, 0.99],
            "sampled": sampled, "r2": r2, "auroc": [[0.5 + v for v in r] for r in r2]}  # fmt: skip


def _measured() -> dict[str, Any]:
    baseline = _seed0([TOKEN, POSITIONAL, LONG], [1, 2, 3], [0.5, 0.25, 0.125],
                      ["embed", "b1", "never"])  # fmt: skip
    baseline["seeds"] = [
        _seed(1, [TOKEN, TOKEN], [2, 4], [0.5, 0.5], [0, 1], ["embed", "embed"]),
        _seed(2, [LONG, LONG, LONG], [1, 1, 1], [1, 1, 1], [1, 2], ["b1", "never"]),
    ]
    residual = _seed0([SHORT, SHORT], [3, 5], [0.2, 0.4], ["b1", "b1"])
    residual["seeds"] = [  # listed seed 2 first: the pairing goes by seed, not by position
        _seed(2, [TOKEN, LONG], [2, 2], [0.6, 0.8], [0, 1], ["embed", "embed"]),
        _seed(1, [LONG], [5], [0.1], [0], ["never"]),
    ]
    return {
        "hooks": HOOKS,
        "n_tokens": 1000,
        "n_docs": 10,
        "n_folds": 5,
        "alphas": [1.0],
        "saes": {"baseline": baseline, "residual": residual, "placebo": copy.deepcopy(baseline)},
    }


# per seed (0, 1, 2), counted by hand from _measured (layers as block indices)
BASELINE = {
    "token_entropy_median": [2, 3, 1],
    "top_token_share_median": [0.25, 0.5, 1.0],
    "median_emergence_layer": [0, -1, 1],  # seed 0: columns 0, 2 emerged: median column 1
    "share_never_predictable": [1 / 3, 0, 1 / 2],
    TOKEN: [1 / 3, 1, 0], POSITIONAL: [1 / 3, 0, 0], SHORT: [0, 0, 0], LONG: [1 / 3, 0, 1],
}  # fmt: skip
RESIDUAL = {
    "token_entropy_median": [4, 5, 2],
    "top_token_share_median": [0.3, 0.1, 0.7],
    "median_emergence_layer": [1, None, -1],  # seed 1: its one sampled feature never emerges
    "share_never_predictable": [0, 1, 0],
    TOKEN: [0, 0, 0.5], POSITIONAL: [0, 0, 0], SHORT: [1, 0, 0], LONG: [0, 1, 0.5],
}  # fmt: skip
TOP_N = 50  # the config's emergence.top_n: entropy lies in [0, log2 50]


@pytest.fixture
def run(tmp_path: Path) -> Run:
    cfg = tiny_config(tmp_path / "run")
    assert cfg.emergence.top_n == TOP_N and cfg.emergence.frac == 0.9
    assert cfg.emergence.metric == "r2"
    return Run(cfg, tmp_path, progress=False)


def _range(q: str) -> tuple[float, float]:
    if q == "token_entropy_median":
        return (0.0, float(np.log2(TOP_N)))
    return (-1.0, 1.0) if q == "median_emergence_layer" else (0.0, 1.0)


def test_summary_cis_and_differences_paired_by_seed(run: Run) -> None:
    s0 = run.cfg.seed
    res = json.loads(json.dumps(summarise(run, _measured()), default=str))  # as results.json
    em, tax = res["emergence"], res["taxonomy"]
    for name, want in (("baseline", BASELINE), ("residual", RESIDUAL)):
        t, e = tax["saes"][name], em["saes"][name]
        assert t["seeds"] == ([s0, s0 + 1, s0 + 2] if name == "baseline" else [s0, s0 + 2, s0 + 1])
        # the per-seed values, in per_seed's order (seed 0, then as the checkpoint lists them)
        order = [0, 1, 2] if name == "baseline" else [0, 2, 1]
        got_entropy = [p["interpretability"]["token_entropy"]["median"] for p in t["per_seed"]]
        assert got_entropy == [want["token_entropy_median"][i] for i in order]
        for c in CLASSES:
            assert [p["shares"][c] for p in t["per_seed"]] == pytest.approx(
                [want[c][i] for i in order]
            )
        assert [p["median_emergence_layer"] for p in e["per_seed"]] == [
            want["median_emergence_layer"][i] for i in order
        ]
        assert e["per_seed"][0]["median_emergence_layer"] == e["median_emergence_layer"]
        assert e["per_seed"][0]["features"] == "all scored features"
        assert [p["n_features"] for p in e["per_seed"]] == [
            len(_measured()["saes"][name]["scored"]),
            *(len(x["sampled"]) for x in _measured()["saes"][name]["seeds"]),
        ]
        # per dictionary: mean of the per-seed medians and the t CI over seeds
        for m in ("token_entropy", "top_token_share"):
            x = want[f"{m}_median"]
            a = t["interpretability_across_seeds"][m]
            assert a["n_seeds"] == 3 and a["mean_of_medians"] == pytest.approx(np.mean(x))
            assert a["ci95"] == pytest.approx(_t_interval(x, _range(f"{m}_median")))
        for q in ("median_emergence_layer", "share_never_predictable"):
            x = [v for v in want[q] if v is not None]
            a = e["across_seeds"][q]
            assert a["n_seeds"] == len(x) and a["mean"] == pytest.approx(np.mean(x))
            assert a["ci95"] == pytest.approx(_t_interval(x, _range(q)))
    # the entropy CI is cut at 0: baseline's t interval reaches below it
    assert _t_interval(BASELINE["token_entropy_median"])[0] < 0
    assert tax["saes"]["baseline"]["interpretability_across_seeds"]["token_entropy"]["ci95"][0] == 0
    assert em["saes"]["residual"]["across_seeds"]["median_emergence_layer"]["n_missing"] == 1

    # differences: residual − baseline, seed k with seed k
    diffs = tax["differences"]
    assert list(diffs) == ["residual_minus_baseline", "placebo_minus_baseline",
                           "residual_minus_placebo"]  # fmt: skip
    by_hand = {  # residual − baseline per seed 0, 1, 2 (None: a seed without a value)
        "token_entropy_median": [2, 2, 1],
        "top_token_share_median": [0.05, -0.4, -0.3],
        "median_emergence_layer": [1, None, -2],
        "share_never_predictable": [-1 / 3, 1, -1 / 2],
        TOKEN: [-1 / 3, -1, 0.5], POSITIONAL: [-1 / 3, 0, 0], SHORT: [1, 0, 0],
        LONG: [-1 / 3, 1, -0.5],
    }  # fmt: skip
    for pair in ("residual_minus_baseline", "residual_minus_placebo"):
        d = diffs[pair]
        for q, per_seed in by_hand.items():
            got = d["share"][q] if q in CLASSES else d[q]
            x = [v for v in per_seed if v is not None]
            lo, hi = _range(q) if q not in CLASSES else (0.0, 1.0)
            assert got["seeds"] == [s0 + k for k, v in enumerate(per_seed) if v is not None]
            assert got["n_seeds"] == len(x) and got["mean"] == pytest.approx(np.mean(x)), q
            assert got["ci95"] == pytest.approx(_t_interval(x, (lo - hi, hi - lo))), q
    # the cut of a difference: a share's to [-1, 1], the layer's to ± the range (2 blocks)
    assert diffs["residual_minus_baseline"]["share"][SHORT]["ci95"][1] == 1.0
    assert diffs["residual_minus_baseline"]["median_emergence_layer"]["ci95"] == [-2.0, 2.0]
    same = diffs["placebo_minus_baseline"]  # the placebo is baseline's copy: 0, CI [0, 0]
    assert same["token_entropy_median"]["mean"] == 0.0
    assert same["token_entropy_median"]["ci95"] == [0.0, 0.0]
    assert all(same["share"][c]["ci95"] == [0.0, 0.0] for c in CLASSES)
    assert em["seed_features"] == run.cfg.emergence.seed_features
    assert "seed-level CI" in tax["definitions"] and "across seeds" in em["definitions"]


def test_checkpoint_without_per_seed_matrix_still_summarises(run: Run) -> None:
    """A checkpoint from before ``emergence.seed_features`` (its seed entries hold no matrix):
    the taxonomy's seed-level CIs are as before, the emergence layer has seed 0 only."""
    new = summarise(run, _measured())
    old_measured = _measured()
    for m in old_measured["saes"].values():
        for extra in m["seeds"]:
            for key in ("sampled", "r2", "auroc"):
                del extra[key]
    old = summarise(run, old_measured)
    for name in ("baseline", "residual"):
        t_old, t_new = old["taxonomy"]["saes"][name], new["taxonomy"]["saes"][name]
        assert t_old["interpretability_across_seeds"] == t_new["interpretability_across_seeds"]
        assert t_old["across_seeds"] == t_new["across_seeds"]
        e = old["emergence"]["saes"][name]
        assert [p["seed"] for p in e["per_seed"]] == [run.cfg.seed]
        a = e["across_seeds"]["median_emergence_layer"]
        assert a["n_seeds"] == 1 and a["ci95"] is None and "one seed" in a["note"]
        assert a["mean"] == e["median_emergence_layer"]
    d = old["taxonomy"]["differences"]["residual_minus_baseline"]
    assert d["median_emergence_layer"]["seeds"] == [run.cfg.seed]
    assert d["median_emergence_layer"]["ci95"] is None
    assert (
        d["token_entropy_median"]
        == new["taxonomy"]["differences"]["residual_minus_baseline"]["token_entropy_median"]
    )
    # and one seed only, nothing else: no CI anywhere, each with its note
    single = _measured()
    for m in single["saes"].values():
        m["seeds"] = []
    one = summarise(run, single)["taxonomy"]
    ent = one["saes"]["baseline"]["interpretability_across_seeds"]["token_entropy"]
    assert ent["n_seeds"] == 1 and ent["ci95"] is None and "one seed" in ent["note"]
    assert one["differences"]["residual_minus_baseline"]["share"][TOKEN]["ci95"] is None
