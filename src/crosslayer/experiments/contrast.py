"""Direct vs evasive answers (study B, experiment 2), with statistics.

Representations as the study defined them: the question is the representation at its last
token; an answer is the mean representation over its tokens when appended to the question.
Each is taken in a representation space (:mod:`crosslayer.experiments.spaces`; centred by
default, raw for the seed's comparison). Per layer, each item's score is
``cos(q, direct) - cos(q, evasive)``. That difference also moves when one kind of answer is
closer to *any* question (more generic wording), so beside it is the mismatched-question
control: the same answers against the other items' questions; the match effect (own-question
minus other-question difference) is what the conclusion rests on.

Baselines: the model's mean log-probability of each answer given the question (the seed's),
and PMI (that minus the answer's log-probability without the question), with the unconditional
log-likelihood and the answer length as covariates. A layer's conclusion says whether the match
effect is real (BH-adjusted Wilcoxon p and a bootstrap CI excluding 0) and whether the cosine
adds to PMI and its covariates (cross-validated pair model, see
:func:`crosslayer.experiments.paired.adds_to_baseline`). :func:`power_statement` says how large
an effect the item count can detect.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from rich.progress import track

from crosslayer.corpus.files import read_text_file
from crosslayer.errors import CrosslayerError
from crosslayer.experiments.output import heatmap, write_results
from crosslayer.experiments.paired import (
    adds_to_baseline,
    adjust_pvalues,
    min_detectable_dz,
    paired_stats,
)
from crosslayer.experiments.reps import (
    SaeSite,
    SaeSpec,
    check_layers,
    resid_hook,
    sae_sites,
    sequence_reps,
)
from crosslayer.experiments.similarity import cosine_matrix, paired_cosine
from crosslayer.experiments.spaces import (
    DEFAULT_SPACES,
    MomentAccumulator,
    Moments,
    check_spaces,
    sae_encoder,
    store_moments,
)
from crosslayer.model import LoadedModel
from crosslayer.provenance import versions
from crosslayer.stage_configs import BUILTIN, ContrastConfig
from crosslayer.store import open_store

_ALIASES = {"direct": ("direct", "answer_narrow"), "evasive": ("evasive", "answer_tricked")}


@dataclass(frozen=True)
class ContrastItem:
    id: str
    question: str
    direct: str
    evasive: str
    kind: str | None = None  # deflection | generality | topic_change, where tagged


# --------------------------------------------------------------------------------------------
# items


def read_items(source: str | Path = BUILTIN) -> list[ContrastItem]:
    """Items from JSONL / a JSON list of objects with ``question``, ``direct``, ``evasive``
    (``answer_narrow`` / ``answer_tricked`` accepted), or study B's layout
    ``{topic: {question, answer_narrow, answer_tricked}}``. ``"builtin"`` is the shipped set."""
    if str(source) == BUILTIN:
        text = resources.files("crosslayer").joinpath("data/contrast_triples.jsonl").read_text()
        return _parse_lines(text, "builtin triples")
    path = Path(source)
    if not path.is_file():
        raise CrosslayerError(f"items file {path} not found", "pass a .json or .jsonl file")

    text = read_text_file(path, "items file")
    if path.suffix == ".jsonl":
        return _parse_lines(text, str(path))
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise CrosslayerError(f"{path} is not valid JSON ({e})", "fix the file") from e
    if isinstance(raw, dict):  # study B: {topic: {...}}
        pairs = [(str(k), v) for k, v in raw.items()]
    elif isinstance(raw, list):
        pairs = [(f"item {i}", v) for i, v in enumerate(raw)]
    else:
        raise CrosslayerError(f"{path} holds neither a list nor an object", "see docs/study_b.md")
    return _check_all([_item(name, obj, str(path)) for name, obj in pairs], str(path))


def _parse_lines(text: str, where: str) -> list[ContrastItem]:
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CrosslayerError(
                f"{where} line {n} is not JSON ({e})", "one object per line"
            ) from e
        items.append(_item(f"line {n}", obj, where))
    return _check_all(items, where)


def _item(name: str, obj: Any, where: str) -> ContrastItem:
    if not isinstance(obj, dict):
        raise CrosslayerError(f"{where}: {name} is not an object", "give question/direct/evasive")
    ident = str(obj.get("id", name))
    raw = {"question": obj.get("question")}
    for key, aliases in _ALIASES.items():
        raw[key] = next((obj[a] for a in aliases if a in obj), None)
    fields: dict[str, str] = {}
    for key, value in raw.items():
        if value is None:
            raise CrosslayerError(
                f"{where}: {ident} has no {key!r} field",
                f"add it (accepted names: {', '.join(_ALIASES.get(key, (key,)))})",
            )
        if not isinstance(value, str) or not value.strip():
            raise CrosslayerError(f"{where}: {ident} has an empty {key!r}", "write the text")
        fields[key] = value
    kind = obj.get("evasive_kind")
    return ContrastItem(ident, fields["question"].strip(), fields["direct"].strip(),
                        fields["evasive"].strip(), kind)  # fmt: skip


def _check_all(items: list[ContrastItem], where: str) -> list[ContrastItem]:
    if len(items) < 3:
        raise CrosslayerError(f"{where} holds {len(items)} items", "give at least 3 for statistics")
    return items


# --------------------------------------------------------------------------------------------
# measurement


def tokenize_pair(model: LoadedModel, question: str, answer: str) -> tuple[list[int], int]:
    """``[BOS] + question + " " + answer`` token ids and the number of question tokens (with
    BOS). Tokenised separately so that the question's tokens are identical in both sequences."""
    tok = model.tokenizer
    q = tok(question, add_special_tokens=False).input_ids
    a = tok(" " + answer, add_special_tokens=False).input_ids
    if not q or not a:
        raise CrosslayerError(f"{question!r} / {answer!r} tokenises to nothing", "give real text")
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    return [*bos, *q, *a], len(bos) + len(q)


def unconditional_ids(model: LoadedModel, ids: list[int], n_q: int) -> list[int]:
    """``[BOS] + answer``: the answer tokens of a pair without the question, for PMI."""
    bos = model.tokenizer.bos_token_id
    if bos is None:
        raise CrosslayerError(
            "the tokenizer has no BOS token, so an answer's log-likelihood without the question "
            "is undefined",
            "use a model whose tokenizer has a BOS token (Gemma's has)",
        )
    return [bos, *ids[n_q:]]


def answer_loglik(model: LoadedModel, ids: list[int], n_q: int) -> float:
    """Mean log-probability of the answer tokens ``ids[n_q:]`` given everything before them."""
    with torch.inference_mode():
        logits = model.model(input_ids=torch.tensor([ids], device=model.device)).logits[0]
    logp = torch.log_softmax(logits.double(), -1)
    targets = torch.tensor(ids[n_q:], device=logp.device)
    return float(logp[n_q - 1 : len(ids) - 1].gather(1, targets[:, None]).mean())


# reps[kind][answer] = one {layer: (question vector, answer mean vector)} per item, raw
Reps = dict[str, dict[str, list[dict[int, tuple[torch.Tensor, torch.Tensor]]]]]


@dataclass
class ContrastResult:
    config: dict[str, Any]
    items: list[dict[str, Any]]
    likelihood: dict[str, Any]  # conditional log-likelihood per token (the seed's baseline)
    layers: dict[str, list[dict[str, Any]]]  # headline space: "resid" / "sae" -> row per layer
    heatmaps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    space: str = "centred"  # the headline space of `layers`, `heatmaps` and the conclusions
    layers_by_space: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    baselines: dict[str, Any] = field(default_factory=dict)  # pmi, unconditional, length
    moments: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    power: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "model": self.model, "versions": versions(),
                "space": self.space, "likelihood": self.likelihood,
                "baselines": self.baselines, "power": self.power, "layers": self.layers,
                "layers_by_space": self.layers_by_space, "moments": self.moments,
                "heatmaps": self.heatmaps, "items": self.items}  # fmt: skip


def run_contrast(
    model: LoadedModel,
    items: Sequence[ContrastItem] | str | Path = BUILTIN,
    *,
    layers: Sequence[int] | None = None,
    saes: Mapping[int, SaeSpec] | str | Path | None = None,
    sae_on_residual: bool = False,
    spaces: Sequence[str] = DEFAULT_SPACES,
    store: Any = None,
    alpha: float = 0.05,
    n_resamples: int = 2000,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = True,
) -> ContrastResult:
    """Score every item on every layer (residuals, and SAE latents where an SAE is given) in
    every representation space (``spaces``, the first is the headline; the centring mean comes
    from ``store``, an ActivationStore or its path, else from the items' own tokens)."""
    source = str(items) if isinstance(items, str | Path) else "python"
    item_list = (
        read_items(items) if isinstance(items, str | Path) else _check_all(list(items), "items")
    )
    space_list = check_spaces(spaces)
    layer_list = check_layers(model, layers)
    sites = sae_sites(model, saes, layers=layer_list, sae_on_residual=sae_on_residual)
    if isinstance(store, str | Path):
        store = open_store(store)
    config = ContrastConfig(
        items=source, layers=layer_list, sae_on_residual=sae_on_residual, spaces=tuple(space_list),
        store=None if store is None else str(getattr(store, "path", store)), alpha=alpha,
        n_resamples=n_resamples, seed=seed,
    ).model_dump()  # fmt: skip
    config["saes"] = {str(k): {"hook": s.hook, "trained_hook": s.trained_hook,
                               "d_sae": s.sae.cfg.d_sae} for k, s in sites.items()}  # fmt: skip

    reps: Reps = {k: {"direct": [], "evasive": []} for k in ("resid", "sae")}
    acc: dict[str, dict[int, MomentAccumulator]] = {"resid": {}, "sae": {}}
    first = int(model.tokenizer.bos_token_id is not None)  # BOS is left out of the moments
    rows = []
    for item in track(item_list, description="contrast", disable=not progress):
        row: dict[str, Any] = {"id": item.id, "kind": item.kind}
        for answer in ("direct", "evasive"):
            ids, n_q = tokenize_pair(model, item.question, getattr(item, answer))
            seq = sequence_reps(model, ids, layer_list, sites)
            for kind, per_layer in seq.items():
                reps[kind][answer].append(
                    {x: (r[n_q - 1], r[n_q:].mean(0)) for x, r in per_layer.items()}
                )
                for x, r in per_layer.items():  # each token once: the question with "direct"
                    acc[kind].setdefault(x, MomentAccumulator()).add(
                        r[first:] if answer == "direct" else r[n_q:]
                    )
            cond = answer_loglik(model, ids, n_q)
            uncond = answer_loglik(model, unconditional_ids(model, ids, n_q), 1)
            row[f"loglik_{answer}"] = cond
            row[f"loglik_unconditional_{answer}"] = uncond
            row[f"pmi_{answer}"] = cond - uncond
            row[f"n_tokens_{answer}"] = len(ids) - n_q
        rows.append(row)

    def per_item(key: str) -> tuple[np.ndarray, np.ndarray]:
        return (np.array([r[f"{key}_direct"] for r in rows], np.float64),
                np.array([r[f"{key}_evasive"] for r in rows], np.float64))  # fmt: skip

    stat = {k: paired_stats(*per_item(k), n_resamples=n_resamples, seed=seed).to_dict()
            for k in ("loglik", "pmi", "loglik_unconditional", "n_tokens")}  # fmt: skip
    diff = {k: np.subtract(*per_item(k)) for k in ("loglik", "pmi", "loglik_unconditional",
                                                   "n_tokens")}  # fmt: skip
    # the seed's baseline, and PMI with the two things it leaves in the answer: genericity
    # (likelihood without the question) and length (log-likelihoods are per token)
    covariates = np.c_[diff["pmi"], diff["loglik_unconditional"], diff["n_tokens"]]
    baseline = {"likelihood": diff["loglik"][:, None], "pmi": covariates}
    moments = _moments(acc, store, sites)
    result = ContrastResult(
        config, rows, stat["loglik"], {}, model=model.identity, space=space_list[0],
        baselines={"pmi": stat["pmi"], "loglik_unconditional": stat["loglik_unconditional"],
                   "n_tokens": stat["n_tokens"]},
        moments={k: {x: m.to_dict() for x, m in v.items()} for k, v in moments.items()},
    )  # fmt: skip
    for space in space_list:
        result.layers_by_space[space] = {}
        for kind in ("resid", "sae"):
            kind_layers = layer_list if kind == "resid" else [x for x in layer_list if x in sites]
            if not kind_layers:
                continue
            result.layers_by_space[space][kind] = _layer_rows(
                reps[kind], moments[kind], space, kind_layers, baseline, alpha, n_resamples,
                seed, rows, kind,
            )  # fmt: skip
            if space == space_list[0]:
                result.heatmaps[kind] = _study_heatmaps(reps[kind], moments[kind], space,
                                                        kind_layers)  # fmt: skip
    result.layers = result.layers_by_space[space_list[0]]
    result.power = power_statement(len(rows), len(layer_list), alpha)
    if out is not None:
        write_results(out, result.to_dict(), _figures(result))
    return result


def power_statement(n_items: int, n_layers: int, alpha: float = 0.05, power: float = 0.8
                    ) -> dict[str, Any]:  # fmt: skip
    """The smallest paired effect dz the item count detects with ``power`` after BH over the
    layers tested (worst case: one layer has an effect) and when every layer has one."""
    one = min_detectable_dz(n_items, n_layers, alpha=alpha, power=power)
    every = min_detectable_dz(n_items, 1, alpha=alpha, power=power)
    return {
        "n_items": n_items, "n_layers": n_layers, "alpha": alpha, "power": power,
        "min_dz_one_layer": one, "min_dz_every_layer": every,
        "definition": "smallest dz = mean(diff) / sd(diff) a two-sided paired t-test detects "
        "with this power at level alpha / n_layers (BH when one layer has an effect) or alpha "
        "(BH when all do); noncentral t",
        "statement": f"with {n_items} items, {power:.0%} power after BH over {n_layers} layers "
        f"needs dz >= {one:.2f} (>= {every:.2f} if every layer has an effect)",
    }  # fmt: skip


def _moments(
    acc: dict[str, dict[int, MomentAccumulator]], store: Any, sites: Mapping[int, SaeSite]
) -> dict[str, dict[int, Moments]]:
    """Per kind and layer: the store's moments where the store holds the hook, else the
    items' own tokens'."""
    out: dict[str, dict[int, Moments]] = {"resid": {}, "sae": {}}
    hooks = set(getattr(store, "hooks", ()) if store is not None else ())
    for kind, per_layer in acc.items():
        for x, a in per_layer.items():
            hook = resid_hook(x) if kind == "resid" else sites[x].hook
            if hook not in hooks:
                out[kind][x] = a.moments("items")
            elif kind == "resid":
                out[kind][x] = store_moments(store, hook)
            else:
                out[kind][x] = store_moments(store, hook, encode=sae_encoder(sites[x].sae))
    return out


def match_scores(
    q: np.ndarray, answers: np.ndarray, q_own: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Own- and other-question cosines of answers [n, d] to questions [n, d] (item i's answer
    and question in row i): ``own[i] = cos(q_own[i], a[i])`` (``q_own`` defaults to ``q``)
    and ``other[i]`` the mean of ``cos(q[j], a[i])`` over the other items j (the
    mismatched-question control: how close the answer is to questions in general)."""
    own = paired_cosine(q if q_own is None else q_own, answers)
    c = cosine_matrix(q, answers)  # [question j, answer i]
    np.fill_diagonal(c, np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column stays NaN
        other = np.nanmean(c, axis=0)
    return own, other


def layer_row(
    own: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray],
    baseline: Mapping[str, np.ndarray], *, n_resamples: int = 2000, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """One layer's statistics from per-item cosines ``own`` / ``other`` (keys ``"direct"``,
    ``"evasive"``): the own-question difference (top level), ``other_question``, the
    ``match`` effect (own minus other) and whether the own-question difference adds to each
    ``baseline`` ([n] or [n, k] per-item differences, e.g. ``{"likelihood": ..., "pmi": ...}``,
    under ``adds_to_{name}``). p-values are unadjusted until :func:`finish_rows`."""
    kw = {"n_resamples": n_resamples, "seed": seed}
    score = own["direct"] - own["evasive"]
    row: dict[str, Any] = {
        **paired_stats(own["direct"], own["evasive"], **kw).to_dict(),
        "other_question": paired_stats(other["direct"], other["evasive"], **kw).to_dict(),
        "match": paired_stats(own["direct"] - other["direct"], own["evasive"] - other["evasive"],
                              **kw).to_dict(),
    }  # fmt: skip
    for name, b in baseline.items():
        row[f"adds_to_{name}"] = adds_to_baseline(score, b, seed=seed)
    return row


def finish_rows(rows: list[dict[str, Any]], alpha: float = 0.05) -> list[dict[str, Any]]:
    """BH across the layers of ``rows`` (one family per question asked), then conclusions."""
    if not rows:
        return rows
    _adjust(rows, None, "p_wilcoxon")
    _adjust(rows, "match", "p_wilcoxon")
    _adjust(rows, "other_question", "p_wilcoxon")
    for key in [k for k in rows[0] if k.startswith("adds_to_")]:
        _adjust(rows, key, "p_adds")
    for r in rows:
        if "adds_to_likelihood" in r:  # the seed's key, kept
            r["p_adds_adjusted"] = r["adds_to_likelihood"]["p_adjusted"]
        r["conclusion"] = conclusion(r, alpha)
    return rows


def _adjust(rows: list[dict[str, Any]], section: str | None, p_key: str) -> None:
    """``p_adjusted`` (BH over the rows) beside ``p_key`` in each row's ``section``."""
    parts = [r if section is None else r[section] for r in rows]
    for part, p in zip(parts, adjust_pvalues([x[p_key] for x in parts]), strict=True):
        part["p_adjusted"] = p


def _layer_rows(
    reps: dict[str, list[dict[int, tuple[torch.Tensor, torch.Tensor]]]],
    moments: Mapping[int, Moments],
    space: str,
    layers: list[int],
    baseline: Mapping[str, np.ndarray],
    alpha: float,
    n_resamples: int,
    seed: int,
    item_rows: list[dict[str, Any]],
    kind: str,
) -> list[dict[str, Any]]:
    out = []
    for layer in layers:
        m = moments[layer]
        q = {a: m.transform(torch.stack([r[layer][0] for r in reps[a]]), space) for a in reps}
        ans = {a: m.transform(torch.stack([r[layer][1] for r in reps[a]]), space) for a in reps}
        own, other = {}, {}
        for a in reps:  # other items' questions: their direct sequences' (the same tokens)
            own[a], other[a] = match_scores(q["direct"], ans[a], q_own=q[a])
        for i, row in enumerate(item_rows):
            row.setdefault("cos", {}).setdefault(space, {}).setdefault(kind, {})[layer] = {
                "direct": own["direct"][i], "evasive": own["evasive"][i],
                "direct_other": other["direct"][i], "evasive_other": other["evasive"][i],
            }  # fmt: skip
        stats = layer_row(own, other, baseline, n_resamples=n_resamples, seed=seed)
        out.append({"layer": layer, "space": space, **stats})
    return finish_rows(out, alpha)


def _reliable(s: Mapping[str, Any], alpha: float) -> bool:
    p = s["p_adjusted"]
    return bool(np.isfinite(p) and p < alpha and (s["ci_low"] > 0 or s["ci_high"] < 0))


def _fmt(s: Mapping[str, Any]) -> str:
    return (f"{s['mean_diff']:+.4f}, 95% CI [{s['ci_low']:+.4f}, {s['ci_high']:+.4f}], "
            f"BH p={s['p_adjusted']:.3g}, dz {s['dz']:+.2f}")  # fmt: skip


def conclusion(row: Mapping[str, Any], alpha: float = 0.05) -> str:
    """One sentence a reader can trust, drawn from the mismatched-question control.

    The own-question difference cos(q, direct) - cos(q, evasive) mixes two things: how close
    each answer is to *its* question (the match) and how close it is to questions in general
    (genericity, or style). The match effect (own-question minus other-question difference)
    is the first alone, so the verdict rests on it; the raw difference is shown beside it."""
    if not np.isfinite(row["p_adjusted"]) or not np.isfinite(row["match"]["p_adjusted"]):
        return "not enough items with a defined cosine to test"
    match, other = row["match"], row["other_question"]
    own = (
        f"own-question difference {row['mean_diff']:+.4f}, other-question {other['mean_diff']:+.4f}"
    )
    if _reliable(match, alpha):
        side = "direct" if match["ci_low"] > 0 else "evasive"
        text = (f"{side} answers match their own question better than other items' questions "
                f"(match effect {_fmt(match)}; {own}, "
                f"paired AUROC {row['auroc_paired']:.2f})")  # fmt: skip
    elif _reliable(row, alpha):
        return (f"the own-question difference ({_fmt(row)}) is as large against other items' "
                f"questions ({other['mean_diff']:+.4f}): it describes the answers, not their "
                f"match to the question (match effect {_fmt(match)})")  # fmt: skip
    else:
        return f"no reliable difference (match effect {_fmt(match)}; {own})"
    pmi = row.get("adds_to_pmi")
    if pmi is None:
        return text
    if np.isfinite(pmi["p_adjusted"]) and pmi["p_adjusted"] < alpha:
        return text + (
            f"; the cosine adds to PMI, unconditional log-likelihood and length (CV log-loss "
            f"{pmi['logloss_baseline']:.3f} -> {pmi['logloss_both']:.3f}, "
            f"BH p={pmi['p_adjusted']:.3g})"
        )
    return (
        text
        + "; but it adds nothing detectable beyond PMI, unconditional log-likelihood and length"
    )


def _study_heatmaps(
    reps: dict[str, list[dict[int, tuple[torch.Tensor, torch.Tensor]]]],
    moments: Mapping[int, Moments], space: str, layers: list[int],
) -> dict[str, np.ndarray]:  # fmt: skip
    """Study B's layer x layer maps: mean over items of cos(question at layer i, answer at
    layer j), each layer in ``space``. Needs one width for all layers; for SAE latents the
    off-diagonal cells compare different dictionaries and are reproduced only for comparison
    with the study."""
    if len({reps["direct"][0][x][0].shape[0] for x in layers}) != 1:
        return {}
    maps = {}
    for answer in ("direct", "evasive"):
        acc = np.zeros((len(layers), len(layers)))
        for r in reps[answer]:
            q = np.stack([moments[x].transform(r[x][0], space) for x in layers])
            a = np.stack([moments[x].transform(r[x][1], space) for x in layers])
            acc += np.nan_to_num(cosine_matrix(q, a))
        maps[answer] = acc / len(reps[answer])
    maps["difference"] = maps["direct"] - maps["evasive"]
    return maps


def _figures(result: ContrastResult) -> dict[str, Any]:
    figs: dict[str, Any] = {}
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4))
    for kind, rows in result.layers.items():
        x = [r["layer"] for r in rows]
        for key, style in (("own", "o-"), ("match", "s--")):
            stats = rows if key == "own" else [r["match"] for r in rows]
            mean = np.array([s["mean_diff"] for s in stats], np.float64)
            err = np.abs(np.array([[s["ci_low"], s["ci_high"]] for s in stats], np.float64).T
                         - mean)  # fmt: skip
            ax1.errorbar(x, mean, yerr=np.nan_to_num(err), fmt=style, capsize=3,
                         label=f"{kind}: {key}")  # fmt: skip
        ax2.plot(x, [r["auroc_paired"] for r in rows], "o-", label=f"{kind}: own")
        ax2.plot(x, [r["match"]["auroc_paired"] for r in rows], "s--", label=f"{kind}: match")
    ax1.axhline(0, color="grey", lw=0.8)
    ax1.set(xlabel="layer", ylabel="direct - evasive",
            title=f"{result.space}: own-question difference and match effect, 95% CI")  # fmt: skip
    ax2.axhline(result.likelihood["auroc_paired"], color="k", ls="--", label="log-likelihood")
    ax2.axhline(result.baselines["pmi"]["auroc_paired"], color="k", ls=":", label="PMI")
    ax2.axhline(0.5, color="grey", lw=0.8)
    ax2.set(xlabel="layer", ylabel="paired AUROC (win rate)", title="direct vs evasive, paired",
            ylim=(0, 1))  # fmt: skip
    for space, by_kind in result.layers_by_space.items():
        rows = by_kind.get("resid", [])
        ax3.plot([r["layer"] for r in rows], [r["match"]["dz"] for r in rows], "o-",
                 label=f"match ({space})")  # fmt: skip
        ax3.plot([r["layer"] for r in rows], [r["dz"] for r in rows], ":", label=f"own ({space})")
    ax3.axhline(0, color="grey", lw=0.8)
    ax3.axhline(
        result.power["min_dz_one_layer"], color="k", lw=1.2, ls="-.", label="80% power (min dz)"
    )
    ax3.axhline(-result.power["min_dz_one_layer"], color="k", lw=1.2, ls="-.")
    ax3.set(xlabel="layer", ylabel="dz", title="resid: effect size per space")
    for ax in (ax1, ax2, ax3):
        ax.legend(fontsize=7)
    figs["contrast_layers"] = fig
    for kind, maps in result.heatmaps.items():
        layers = [str(r["layer"]) for r in result.layers[kind]]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for ax, (name, m) in zip(axes, maps.items(), strict=True):
            heatmap(ax, m, f"{kind} ({result.space}): cos(q layer i, {name} answer layer j)",
                    layers, diverging=name == "difference")  # fmt: skip
            ax.set(xlabel="answer layer", ylabel="question layer")
        figs[f"heatmaps_{kind}"] = fig
    return figs


def summary_lines(result: ContrastResult) -> list[str]:
    """What the CLI prints: the baselines, the power statement and one conclusion per layer."""
    lk, pmi = result.likelihood, result.baselines["pmi"]
    un = result.baselines["loglik_unconditional"]
    lines = [
        f"likelihood baseline: mean diff {lk['mean_diff']:+.3f} nats/token, paired AUROC "
        f"{lk['auroc_paired']:.2f} (unpaired {lk['auroc']:.2f}), "
        f"Wilcoxon p={lk['p_wilcoxon']:.3g}, n={lk['n']}",
        f"PMI baseline (with minus without the question): mean diff {pmi['mean_diff']:+.3f} "
        f"nats/token, paired AUROC {pmi['auroc_paired']:.2f}; without the question "
        f"{un['mean_diff']:+.3f} nats/token",
        f"power: {result.power['statement']}",
    ]
    for kind, rows in result.layers.items():
        lines += [f"{kind} layer {r['layer']} ({r['space']}): {r['conclusion']}" for r in rows]
    return lines
