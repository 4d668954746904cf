"""Direct vs evasive answers (study B, experiment 2), with statistics.

Representations as the study defined them: the question is the representation at its last
token; an answer is the mean representation over its tokens when appended to the question.
Per layer, each item's score is ``cos(q, direct) - cos(q, evasive)``. The baseline is the
model's own mean log-probability of each answer given the question (teacher forcing).
A layer's conclusion says whether the difference is real (BH-adjusted Wilcoxon p and a
bootstrap CI excluding 0) and whether it adds to the likelihood (cross-validated pair model,
see :func:`crosslayer.experiments.paired.adds_to_baseline`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from rich.progress import track

from crosslayer.errors import CrosslayerError
from crosslayer.experiments.output import heatmap, write_results
from crosslayer.experiments.paired import adds_to_baseline, adjust_pvalues, paired_stats
from crosslayer.experiments.reps import SaeSpec, check_layers, sae_sites, sequence_reps
from crosslayer.experiments.similarity import cosine_matrix, paired_cosine
from crosslayer.model import LoadedModel
from crosslayer.provenance import versions
from crosslayer.stage_configs import BUILTIN, ContrastConfig

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
    from crosslayer.corpus.files import read_text_file

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


def answer_loglik(model: LoadedModel, ids: list[int], n_q: int) -> float:
    """Mean log-probability of the answer tokens ``ids[n_q:]`` given everything before them."""
    with torch.inference_mode():
        logits = model.model(input_ids=torch.tensor([ids], device=model.device)).logits[0]
    logp = torch.log_softmax(logits.double(), -1)
    targets = torch.tensor(ids[n_q:], device=logp.device)
    return float(logp[n_q - 1 : len(ids) - 1].gather(1, targets[:, None]).mean())


@dataclass
class ContrastResult:
    config: dict[str, Any]
    items: list[dict[str, Any]]
    likelihood: dict[str, Any]
    layers: dict[str, list[dict[str, Any]]]  # "resid" / "sae" -> one row per layer
    heatmaps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "model": self.model, "versions": versions(),
                "likelihood": self.likelihood, "layers": self.layers,
                "heatmaps": self.heatmaps, "items": self.items}  # fmt: skip


def run_contrast(
    model: LoadedModel,
    items: Sequence[ContrastItem] | str | Path = BUILTIN,
    *,
    layers: Sequence[int] | None = None,
    saes: Mapping[int, SaeSpec] | str | Path | None = None,
    sae_on_residual: bool = False,
    alpha: float = 0.05,
    n_resamples: int = 2000,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = True,
) -> ContrastResult:
    """Score every item on every layer (residuals, and SAE latents where an SAE is given)."""
    source = str(items) if isinstance(items, str | Path) else "python"
    item_list = (
        read_items(items) if isinstance(items, str | Path) else _check_all(list(items), "items")
    )
    layer_list = check_layers(model, layers)
    sites = sae_sites(model, saes, layers=layer_list, sae_on_residual=sae_on_residual)
    config = ContrastConfig(
        items=source, layers=layer_list, sae_on_residual=sae_on_residual, alpha=alpha,
        n_resamples=n_resamples, seed=seed,
    ).model_dump()  # fmt: skip
    config["saes"] = {str(k): {"hook": s.hook, "trained_hook": s.trained_hook,
                               "d_sae": s.sae.cfg.d_sae} for k, s in sites.items()}  # fmt: skip

    # reps[kind][answer] = list over items of {layer: (q [d], a [d])}
    reps: dict[str, dict[str, list[dict[int, tuple[torch.Tensor, torch.Tensor]]]]] = {
        k: {"direct": [], "evasive": []} for k in ("resid", "sae")
    }
    ll: dict[str, list[float]] = {"direct": [], "evasive": []}
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
            ll[answer].append(answer_loglik(model, ids, n_q))
            row[f"loglik_{answer}"] = ll[answer][-1]
            row[f"n_tokens_{answer}"] = len(ids) - n_q
        rows.append(row)

    ll_d, ll_e = np.array(ll["direct"]), np.array(ll["evasive"])
    likelihood = paired_stats(ll_d, ll_e, n_resamples=n_resamples, seed=seed).to_dict()
    result = ContrastResult(config, rows, likelihood, {}, model=model.identity)
    for kind in ("resid", "sae"):
        kind_layers = layer_list if kind == "resid" else [x for x in layer_list if x in sites]
        if not kind_layers:
            continue
        result.layers[kind] = _layer_rows(reps[kind], kind_layers, ll_d - ll_e, alpha,
                                          n_resamples, seed, rows, kind)  # fmt: skip
        result.heatmaps[kind] = _study_heatmaps(reps[kind], kind_layers)
    if out is not None:
        write_results(out, result.to_dict(), _figures(result))
    return result


def _layer_rows(
    reps: dict[str, list[dict[int, tuple[torch.Tensor, torch.Tensor]]]],
    layers: list[int],
    ll_diff: np.ndarray,
    alpha: float,
    n_resamples: int,
    seed: int,
    item_rows: list[dict[str, Any]],
    kind: str,
) -> list[dict[str, Any]]:
    out = []
    for layer in layers:
        cos = {
            answer: paired_cosine(torch.stack([r[layer][0] for r in reps[answer]]),
                                  torch.stack([r[layer][1] for r in reps[answer]]))
            for answer in ("direct", "evasive")
        }  # fmt: skip
        for i, row in enumerate(item_rows):
            row.setdefault(f"cos_{kind}", {})[layer] = [cos["direct"][i], cos["evasive"][i]]
        stats = paired_stats(cos["direct"], cos["evasive"], n_resamples=n_resamples, seed=seed)
        adds = adds_to_baseline(cos["direct"] - cos["evasive"], ll_diff, seed=seed)
        out.append({"layer": layer, **stats.to_dict(), "adds_to_likelihood": adds})
    for key, adj in (("p_wilcoxon", "p_adjusted"), ("p_adds", "p_adds_adjusted")):
        values = [r[key] if key in r else r["adds_to_likelihood"][key] for r in out]
        for r, p in zip(out, adjust_pvalues(values), strict=True):
            r[adj] = p
    for r in out:
        r["conclusion"] = conclusion(r, alpha)
    return out


def conclusion(row: Mapping[str, Any], alpha: float = 0.05) -> str:
    """One sentence a reader can trust: is the difference real, does it add to likelihood?"""
    p, lo, hi = row["p_adjusted"], row["ci_low"], row["ci_high"]
    if not np.isfinite(p):
        return "not enough items with a defined cosine to test"
    real = p < alpha and (lo > 0 or hi < 0)
    if not real:
        return (f"no reliable difference (mean {row['mean_diff']:+.4f}, 95% CI [{lo:+.4f}, "
                f"{hi:+.4f}], BH p={p:.3g})")  # fmt: skip
    side = "direct" if lo > 0 else "evasive"
    text = (f"{side} answers are closer to the question (mean {row['mean_diff']:+.4f}, 95% CI "
            f"[{lo:+.4f}, {hi:+.4f}], BH p={p:.3g}, AUROC {row['auroc']:.2f})")  # fmt: skip
    pa = row["p_adds_adjusted"]
    adds = row["adds_to_likelihood"]
    if np.isfinite(pa) and pa < alpha:
        return text + (
            f"; it adds to the model's likelihood (CV log-loss {adds['logloss_baseline']:.3f}"
            f" -> {adds['logloss_both']:.3f}, BH p={pa:.3g})"
        )
    return text + "; but it adds nothing detectable beyond the model's own likelihood"


def _study_heatmaps(
    reps: dict[str, list[dict[int, tuple[torch.Tensor, torch.Tensor]]]], layers: list[int]
) -> dict[str, np.ndarray]:
    """Study B's layer x layer maps: mean over items of cos(question at layer i, answer at
    layer j). Needs one width for all layers; for SAE latents the off-diagonal cells compare
    different dictionaries and are reproduced only for comparison with the study."""
    if len({reps["direct"][0][x][0].shape[0] for x in layers}) != 1:
        return {}
    maps = {}
    for answer in ("direct", "evasive"):
        acc = np.zeros((len(layers), len(layers)))
        for r in reps[answer]:
            q = torch.stack([r[x][0] for x in layers])
            a = torch.stack([r[x][1] for x in layers])
            acc += np.nan_to_num(cosine_matrix(q, a))
        maps[answer] = acc / len(reps[answer])
    maps["difference"] = maps["direct"] - maps["evasive"]
    return maps


def _figures(result: ContrastResult) -> dict[str, Any]:
    figs: dict[str, Any] = {}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for kind, rows in result.layers.items():
        x = [r["layer"] for r in rows]
        mean = np.array([r["mean_diff"] for r in rows], np.float64)
        err = np.abs(np.array([[r["ci_low"], r["ci_high"]] for r in rows], np.float64).T - mean)
        ax1.errorbar(x, mean, yerr=np.nan_to_num(err), marker="o", capsize=3, label=kind)
        ax2.plot(x, [r["auroc"] for r in rows], marker="o", label=kind)
    ax1.axhline(0, color="grey", lw=0.8)
    ax1.set(
        xlabel="layer", ylabel="cos(q, direct) - cos(q, evasive)", title="paired difference, 95% CI"
    )
    ax2.axhline(result.likelihood["auroc"], color="k", ls="--", label="log-likelihood")
    ax2.axhline(0.5, color="grey", lw=0.8)
    ax2.set(xlabel="layer", ylabel="AUROC direct vs evasive", title="as a classifier", ylim=(0, 1))
    for ax in (ax1, ax2):
        ax.legend(fontsize=8)
    figs["contrast_layers"] = fig
    for kind, maps in result.heatmaps.items():
        layers = [str(r["layer"]) for r in result.layers[kind]]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for ax, (name, m) in zip(axes, maps.items(), strict=True):
            heatmap(ax, m, f"{kind}: cos(q layer i, {name} answer layer j)", layers,
                    diverging=name == "difference")  # fmt: skip
            ax.set(xlabel="answer layer", ylabel="question layer")
        figs[f"heatmaps_{kind}"] = fig
    return figs


def summary_lines(result: ContrastResult) -> list[str]:
    """What the CLI prints: the likelihood baseline and one conclusion per layer."""
    lk = result.likelihood
    lines = [
        f"likelihood baseline: mean diff {lk['mean_diff']:+.3f} nats/token, "
        f"AUROC {lk['auroc']:.2f}, Wilcoxon p={lk['p_wilcoxon']:.3g}, n={lk['n']}"
    ]
    for kind, rows in result.layers.items():
        lines += [f"{kind} layer {r['layer']}: {r['conclusion']}" for r in rows]
    return lines
