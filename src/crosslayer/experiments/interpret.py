"""Latent interpretation on PARAREL facts (study B, experiment 3).

Each prompt has ``[MASK]`` filled with the gold answer, BOS first. Latents are read at the
first answer token ("answer"), as the study did, and optionally at the token before it
("before"), where the model has to predict the answer. The study observed that the most
active latents "do not always correspond to the target token"; this is quantified as the share
of fact groups whose selected latents promote the answer's first token (through the final
norm's gain and the unembedding), next to two nulls (:mod:`.selection`): the same latents
scored against other groups' answers (permutation) and density-matched random latents. Latents
are selected contrastively by default (group mean code minus the other groups' mean), beside
the raw top-k, whose most frequent members are generic and named in the results.

Codes of paraphrases are compared stratified by fact, template and answer token: different
facts with the same answer token (or template) can be more alike than paraphrases of one fact,
so one "within vs between" number is confounded. A logit lens per block
(:mod:`.logit_lens`) says how early the next token and the answer are readable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from crosslayer.errors import CrosslayerError
from crosslayer.experiments import selection as sel
from crosslayer.experiments.latents import LatentInfo, PromotedTokens, describe, to_html
from crosslayer.experiments.logit_lens import lens_figure, run_logit_lens
from crosslayer.experiments.output import heatmap, write_results
from crosslayer.experiments.pararel import Fact, read_facts, subject, template
from crosslayer.experiments.reps import SaeSite, SaeSpec, check_layers, sae_sites
from crosslayer.experiments.similarity import cosine_matrix
from crosslayer.model import LoadedModel, parse_hook
from crosslayer.model.hooks import decoder_layers
from crosslayer.model.hooks import site as hook_site
from crosslayer.provenance import versions
from crosslayer.stage_configs import InterpretConfig
from crosslayer.store import open_store


def answer_position(model: LoadedModel, fact: Fact) -> tuple[list[int], int]:
    """Token ids of ``[BOS] + fact.text`` and the index of the first answer token.

    The answer starts at character ``len(fact.prefix)``; its first token is the first whose
    character span ends after that (a token like " logic" carries the space before it).
    """
    tok = model.tokenizer
    enc = tok(fact.text, add_special_tokens=False, return_offsets_mapping=True)
    start = len(fact.prefix)
    idx = next((i for i, (_, end) in enumerate(enc["offset_mapping"]) if end > start), None)
    if idx is None:
        raise CrosslayerError(f"no answer token found in {fact.text!r}", "check the fact entry")
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    return [*bos, *enc["input_ids"]], idx + len(bos)


@dataclass
class InterpretResult:
    config: dict[str, Any]
    groups: list[dict[str, Any]]  # per group: subject prompt, answer, model rank/top-k hits
    layers: dict[str, list[dict[str, Any]]]  # position -> per layer: top latents, shares
    maps: dict[str, dict[str, Any]]  # position -> topic x topic / prompt x prompt / layer x layer
    # results.json keeps prompt x prompt maps only as summaries (1300 prompts: 1.7M cosines each)
    latents: list[LatentInfo] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    logit_lens: dict[str, Any] | None = None  # see crosslayer.experiments.logit_lens

    def to_dict(self) -> dict[str, Any]:
        maps = {p: {k: v for k, v in m.items() if k != "prompt_by_prompt"}
                for p, m in self.maps.items()}  # fmt: skip
        return {"config": self.config, "model": self.model, "versions": versions(),
                "definitions": DEFINITIONS, "groups": self.groups, "layers": self.layers,
                "maps": maps, "logit_lens": self.logit_lens,
                "latents": [x.to_dict() for x in self.latents]}  # fmt: skip


DEFINITIONS = {
    "promotes": "an answer token of the group is among the promote_k tokens with the largest "
    "(W_dec[i] * final_norm_gain) @ W_U of any of the group's selected latents",
    "selection": "contrastive: top_k of the group's mean code minus the mean of the other "
    "groups' mean codes; top: top_k of the group's mean code",
    "null_permutation": "the same selected latents scored against another group's answer "
    "(random derangements of the groups); mean, 95% interval, one-sided p",
    "null_matched": "each selected latent replaced by one of its null_neighbours nearest "
    "latents in log firing density (on these prompts, never 0) and log decoder norm",
    "observed_ci95": "95% percentile bootstrap over fact groups",
    "generic_latents": "latents selected for more than half of the groups",
    "paraphrase_cosine": "mean cosine of SAE codes over prompt pairs, by same/other fact, "
    "same/other template and same/other answer token; n_pairs per cell",
}


def run_interpret(
    model: LoadedModel,
    facts: Sequence[Sequence[Fact]] | str | Path,
    saes: Mapping[int, SaeSpec] | str | Path,
    *,
    relation: str | None = None,
    n_groups: int | None = 100,
    layers: Sequence[int] | None = None,
    top_k: int = 10,
    before: bool = False,
    promote_k: int = 20,
    sae_on_residual: bool = False,
    store: Any = None,
    n_contexts: int = 5,
    out: str | Path | None = None,
    selection: sel.Selection = "contrastive",
    n_permutations: int = 1000,
    n_null_draws: int = 1000,
    null_neighbours: int = 20,
    logit_lens: bool = True,
    lens_tokens: int = 1000,
    lens_translator: bool = False,
    seed: int = 0,
) -> InterpretResult:
    """Selected latents per fact group on every layer with an SAE, their promotion shares
    against two nulls, their descriptions, and (``logit_lens``) a logit lens per block."""
    groups = (read_facts(facts, relation=relation, n_groups=n_groups)
              if isinstance(facts, str | Path) else [list(g) for g in facts])  # fmt: skip
    if not groups or any(not g for g in groups):
        raise CrosslayerError("no facts given", "pass a PARAREL file or non-empty fact groups")
    if saes is None:
        raise CrosslayerError("interpret needs SAEs", "pass --sae LAYER=PATH or --sae-dir CLONE")
    sites = sae_sites(model, saes, layers=check_layers(model, layers),
                      sae_on_residual=sae_on_residual)  # fmt: skip
    if layers is not None:
        sites = {k: v for k, v in sites.items() if k in set(layers)}
    if not sites:
        raise CrosslayerError("none of the requested layers has an SAE", "give SAEs for them")
    sae_layers = sorted(sites)
    if isinstance(store, str | Path):
        store = open_store(store)
    config = InterpretConfig(
        facts=str(facts) if isinstance(facts, str | Path) else "python", relation=relation,
        n_groups=n_groups, layers=sae_layers, top_k=top_k, before=before, promote_k=promote_k,
        sae_on_residual=sae_on_residual,
        store=None if store is None else str(store.path), selection=selection,
        n_permutations=n_permutations, n_null_draws=n_null_draws,
        null_neighbours=null_neighbours, logit_lens=logit_lens, lens_tokens=lens_tokens,
        lens_translator=lens_translator, seed=seed,
    ).model_dump()  # fmt: skip

    positions = ["answer", "before"] if before else ["answer"]
    prompt_group, seqs, full, starts, templates = [], [], [], [], []
    for g, group in enumerate(groups):
        subj = subject(group)
        for fact in group:
            ids, pos = answer_position(model, fact)
            if pos == 0:
                raise CrosslayerError(f"{fact.prompt!r} starts with the answer and the tokenizer "
                                      "has no BOS", "use a model with a BOS token")  # fmt: skip
            seqs.append(ids[: pos + 1])  # what comes after the answer token changes nothing here
            full.append(ids)  # the logit lens reads every position
            starts.append(pos)
            prompt_group.append(g)
            templates.append(template(fact, subj))
    at_answer, ranks_a = answer_forward(model, sites, seqs)
    pg = np.array(prompt_group)
    first = (
        np.array([len(s) == 2 for s in seqs])
        if model.tokenizer.bos_token_id is not None
        else np.zeros(len(seqs), bool)
    )
    answer_tok = [s[-1] for s in seqs]
    # Prompts used per position. Where the answer starts the prompt, the token before is BOS:
    # SAEs never see BOS in training and its codes are ~15x larger (Gemma 3 270M, layer 12), so
    # they would set every group's mean there; the "before" position leaves those prompts out.
    used = {p: np.ones(len(seqs), bool) if p == "answer" else ~first for p in positions}
    pgs = {p: pg[used[p]] for p in positions}
    # [n_used, d_sae] per position and layer: index 1 = answer token, 0 = the token before
    codes = {p: {x: at_answer[x][torch.from_numpy(used[p]), 1 if p == "answer" else 0]
                 for x in sae_layers} for p in positions}  # fmt: skip

    group_rows: list[dict[str, Any]] = []
    for g, group in enumerate(groups):
        r = ranks_a[pg == g]
        group_rows.append({"group": g, "prompt": group[0].prompt, "answer": group[0].answer,
                           "relation": group[0].relation, "n_prompts": len(group),
                           "model_top1": float(np.mean(r == 0)),
                           "model_top10": float(np.mean(r < 10)),
                           # prompts that start with the answer: the token before is BOS
                           "n_answer_first": int(np.sum(first[pg == g]))})  # fmt: skip
    model_predicts = np.array([row["model_top10"] >= 0.5 for row in group_rows])

    answers_of = [{answer_tok[i] for i in np.flatnonzero(pg == g)} for g in range(len(groups))]
    # every latent's promoted tokens are computed once per layer, in chunks (see PromotedTokens)
    promoted = {x: PromotedTokens(sites[x], model, max(promote_k, 10)) for x in sae_layers}
    nulls = _NullSettings(n_permutations, n_null_draws, null_neighbours, seed)
    template_id = np.unique(np.array(templates), return_inverse=True)[1]
    layers_out: dict[str, list[dict[str, Any]]] = {}
    maps: dict[str, dict[str, Any]] = {}
    wanted: dict[int, set[int]] = {x: set() for x in sae_layers}
    for p in positions:
        layers_out[p] = []
        for x in sae_layers:
            means = _group_means(codes[p][x], pgs[p], len(groups))
            top = means.topk(min(top_k, means.shape[1]), dim=-1)
            row: dict[str, Any] = {
                "layer": x, "hook": sites[x].hook, "selection": selection,
                "top_latents": top.indices.tolist(), "top_values": top.values.tolist(),
            }  # fmt: skip
            shares, flags = {}, {}
            for how in sel.SELECTIONS:
                chosen = sel.select_latents(means, top_k, how)
                wanted[x].update(chosen.flatten().tolist())
                row[f"{how}_latents"] = chosen.tolist()
                shares[how], flags[how] = _shares(
                    chosen.numpy(),
                    codes[p][x],
                    sites[x],
                    promoted[x],
                    answers_of,
                    promote_k,
                    nulls,
                )
            row |= {
                "shares": shares,
                "promotes_answer": flags[selection].tolist(),
                "share_promoting": shares[selection]["observed"],
                # the nulls' means, flat for the report (intervals: shares[selection])
                "share_promoting_null_permutation": shares[selection]
                .get("null_permutation", {})
                .get("mean"),
                "share_promoting_null_matched": shares[selection]["null_matched"]["mean"],
                "share_promoting_when_model_predicts": _share(flags[selection], model_predicts),
                "share_promoting_when_not": _share(flags[selection], ~model_predicts),
                "n_groups_model_predicts": int(model_predicts.sum()),
                "mean_l0": float((codes[p][x] > 0).sum(-1).float().mean()),
                "n_prompts_used": int(used[p].sum()),
            }
            layers_out[p].append(row)
        prompt_cosines = {x: cosine_matrix(codes[p][x]) for x in sae_layers}
        tok_used = np.array(answer_tok)[used[p]]
        maps[p] = {
            "topic_by_topic": {x: cosine_matrix(_group_means(codes[p][x], pgs[p], len(groups)))
                               for x in sae_layers},
            "prompt_by_prompt": prompt_cosines,
            "paraphrase_cosine": {x: paraphrase_cosine(prompt_cosines[x], pgs[p],
                                                       template_id[used[p]], tok_used)
                                  for x in sae_layers},
            "layer_by_layer": _layer_by_layer(codes[p], sae_layers),
        }  # fmt: skip
    lens = None
    if logit_lens:
        lens = run_logit_lens(
            model, full, starts, prompt_group, sites=sites, translator=lens_translator,
            max_next=lens_tokens, seed=seed,
        )  # fmt: skip
    latents = describe(model, sites, {x: sorted(v) for x, v in wanted.items()}, store=store,
                       n_contexts=n_contexts, promoted=promoted)  # fmt: skip
    result = InterpretResult(config, group_rows, layers_out, maps, latents, model.identity, lens)
    if out is not None:
        write_results(out, result.to_dict(), _figures(result, groups),
                      {"latents.html": to_html(latents)})  # fmt: skip
    return result


def answer_forward(
    model: LoadedModel, sites: Mapping[int, SaeSite], seqs: Sequence[Sequence[int]],
    batch_size: int = 32,
) -> tuple[dict[int, torch.Tensor], np.ndarray]:  # fmt: skip
    """SAE codes at the last two tokens of each sequence (``[BOS] prefix answer_token``), and
    the rank (0 = top) of the last token in the model's prediction at the one before.

    Sequences of equal length share a forward pass (no padding, so nothing to mask), which
    captures the SAE hooks and keeps the logits of the last two positions only. Under causal
    attention these values equal those of a run on the whole prompt, one prompt at a time.
    Returns ``({layer: [n, 2, d_sae]}, ranks [n])``.
    """
    hooks = sorted({s.hook for s in sites.values()})
    by_len: dict[int, list[int]] = {}
    for i, seq in enumerate(seqs):
        by_len.setdefault(len(seq), []).append(i)
    acts = {h: torch.empty(0) for h in hooks}
    ranks = np.zeros(len(seqs), np.int64)
    for idx in by_len.values():
        for start in range(0, len(idx), batch_size):
            rows = idx[start : start + batch_size]
            ids = torch.tensor([list(seqs[i]) for i in rows], device=model.device)
            got, logits = _forward_last_two(model, ids, hooks)
            before = logits[:, 0].float()  # the prediction of the last token
            target = before.gather(1, ids[:, -1:])
            ranks[rows] = (before > target).sum(1).cpu().numpy()
            for h in hooks:
                if acts[h].numel() == 0:
                    acts[h] = torch.empty(len(seqs), 2, got[h].shape[-1], dtype=got[h].dtype)
                acts[h][rows] = got[h].cpu()
    out = {}
    for layer, site in sites.items():
        x = acts[site.hook].to(site.sae.device, site.sae.dtype)
        with torch.inference_mode():
            out[layer] = site.sae.encode(x).float().cpu()
    return out, ranks


def _forward_last_two(
    model: LoadedModel, ids: torch.Tensor, hooks: Sequence[str]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One full forward: each hook's value at the last two positions, and the logits at the
    second-to-last (the prediction of the last token).

    ``LoadedModel.run_with_hooks`` stops at the deepest hook and ``run_with_replacement``
    returns logits for every position (262k wide): neither gives both in one pass.
    """
    layers = decoder_layers(model.model, model.n_layers)
    out: dict[str, torch.Tensor] = {}

    def keep(name: str, value: Any) -> None:
        value = value if isinstance(value, torch.Tensor) else value[0]
        out[name] = value[:, -2:].detach().clone()

    handles = []
    for name in hooks:
        s = hook_site(layers, parse_hook(name))
        if s.is_input:
            handles.append(s.module.register_forward_pre_hook(
                lambda _m, a, k, n=name: keep(n, a[0] if a else k["hidden_states"]),
                with_kwargs=True))  # fmt: skip
        else:
            handles.append(s.module.register_forward_hook(lambda _m, _a, o, n=name: keep(n, o)))
    try:
        with torch.inference_mode():
            # only the second-to-last position's logits: each row costs a 262k-wide product
            at = torch.tensor([ids.shape[1] - 2], device=ids.device)
            logits = model.model(input_ids=ids, use_cache=False, logits_to_keep=at).logits
    finally:
        for h in handles:
            h.remove()
    return out, logits


def _group_means(codes: torch.Tensor, prompt_group: np.ndarray, n_groups: int) -> torch.Tensor:
    """Mean code per group; a group with no prompt used gets zeros (its top values read 0)."""
    zero = torch.zeros(codes.shape[1])
    return torch.stack([codes[prompt_group == g].mean(0) if (prompt_group == g).any() else zero
                        for g in range(n_groups)])  # fmt: skip


@dataclass(frozen=True)
class _NullSettings:
    n_permutations: int
    n_draws: int
    neighbours: int
    seed: int


def _shares(
    chosen: np.ndarray, codes: torch.Tensor, site: SaeSite, promoted: PromotedTokens,
    answers: list[set[int]], k: int, nulls: _NullSettings,
) -> tuple[dict[str, Any], np.ndarray]:  # fmt: skip
    """The promotion share of one selection, its bootstrap interval, both nulls and the
    generic latents; and the per-group flags. A group's prompts may tokenise the answer
    differently: any of its answer tokens counts."""

    def promotes(i: int) -> set[int]:
        return set(promoted.top(i, k)[0])

    density = (codes > 0).float().mean(0).numpy()  # on these prompts: never a dead latent
    norm = site.sae.W_dec.detach().float().norm(dim=-1).cpu().numpy()
    cands = sel.matched_candidates(chosen, density, norm, nulls.neighbours)
    promoted.ensure([*chosen.flatten().tolist(), *np.concatenate(list(cands.values())).tolist()])
    hits = sel.hit_matrix(chosen, answers, promotes)
    flags = hits.diagonal().copy()
    observed = float(flags.mean())
    out: dict[str, Any] = {
        "observed": observed,
        "observed_ci95": sel.bootstrap_share(flags, seed=nulls.seed),
        "n_groups": len(flags),
    }
    if len(answers) >= 2:
        perm = sel.permutation_null(hits, nulls.n_permutations, nulls.seed)
        out["null_permutation"] = sel.summarise_null(perm, observed).to_dict()
    draws = sel.matched_draws(chosen, cands, nulls.n_draws, nulls.seed)
    matched = sel.matched_null(draws, answers, promotes)
    out["null_matched"] = sel.summarise_null(matched, observed).to_dict()
    out["null_matched_density"] = {
        "selected_median": float(np.median(density[chosen])),
        "drawn_median": float(np.median(density[draws])),
    }
    out["generic_latents"] = sel.generic_latents(chosen)
    return out, flags


def paraphrase_cosine(
    prompt_cosines: np.ndarray, prompt_group: np.ndarray, template_id: np.ndarray,
    answer_token: np.ndarray,
) -> dict[str, dict[str, float | int | None]]:  # fmt: skip
    """Mean prompt x prompt cosine of codes per stratum of prompt pairs: the same fact
    (different templates by construction), or other facts with the same / another template
    and the same / another answer token. A code that follows the fact beats every
    ``other_fact_*`` cell; one that follows the answer word or the wording does not."""
    off = ~np.eye(len(prompt_group), dtype=bool)  # a prompt with itself says nothing
    fact = prompt_group[:, None] == prompt_group[None, :]
    tmpl = template_id[:, None] == template_id[None, :]
    tok = answer_token[:, None] == answer_token[None, :]
    cells = {"same_fact": fact & off}
    for t_name, t in (("same_template", tmpl), ("other_template", ~tmpl)):
        for a_name, a in (("same_answer", tok), ("other_answer", ~tok)):
            cells[f"other_fact_{t_name}_{a_name}"] = ~fact & t & a
    upper = np.triu(np.ones_like(off), 1)  # each unordered pair once
    return {name: {"mean": _nanmean(prompt_cosines[m]), "n_pairs": int((m & upper).sum())}
            for name, m in cells.items()}  # fmt: skip


def _nanmean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _share(flags: np.ndarray, mask: np.ndarray) -> float | None:
    return float(flags[mask].mean()) if mask.any() else None


def _layer_by_layer(stacked: Mapping[int, torch.Tensor], layers: list[int]) -> np.ndarray | None:
    """Mean over prompts of the layer x layer cosine of one prompt's latents (the study's map;
    different SAEs' latent indices are unrelated, so this is for comparison only)."""
    if len({stacked[x].shape[1] for x in layers}) != 1:
        return None
    per_prompt = torch.stack([stacked[x] for x in layers], 1)  # [n, L, d]
    return np.nanmean(np.stack([cosine_matrix(m) for m in per_prompt]), 0)


def _figures(result: InterpretResult, groups: list[list[Fact]]) -> dict[str, Any]:
    figs: dict[str, Any] = {}
    answers = [g[0].answer for g in groups]
    titles = {"topic_by_topic": "topic x topic", "prompt_by_prompt": "prompt x prompt"}
    for p, rows in result.layers.items():
        figs[f"promotes_{p}"] = _promotes_figure(rows, p, result.config["top_k"])
        for name, title in titles.items():
            per_layer = result.maps[p][name]
            k = len(per_layer)
            fig, axes = plt.subplots(1, k, figsize=(4.5 * k, 4.2), squeeze=False,
                                     layout="constrained")  # fmt: skip
            for ax, (x_, m) in zip(axes[0], per_layer.items(), strict=True):
                heatmap(ax, m, f"layer {x_}", answers if name == "topic_by_topic" else None)
            fig.suptitle(f"{title} cosine of SAE codes ({p} token)", fontsize=10)
            figs[f"{name}_{p}"] = fig
        if result.maps[p]["layer_by_layer"] is not None and len(rows) > 1:
            fig, ax = plt.subplots(figsize=(4.5, 4), layout="constrained")
            heatmap(ax, result.maps[p]["layer_by_layer"], f"layer x layer ({p} token)",
                    [str(r["layer"]) for r in rows])  # fmt: skip
            figs[f"layer_by_layer_{p}"] = fig
    if result.logit_lens is not None:
        figs["logit_lens"] = lens_figure(result.logit_lens)
    return figs


def _promotes_figure(rows: list[dict[str, Any]], position: str, top_k: int) -> Any:
    """Per layer and selection: the observed share (95% bootstrap) and both nulls' means with
    their 95% intervals."""
    fig, ax = plt.subplots(figsize=(7, 3.6), layout="constrained")
    bars = [(how, what) for how in sel.SELECTIONS
            for what in ("observed", "null_permutation", "null_matched")]  # fmt: skip
    width = 0.8 / len(bars)
    colours = {"observed": None, "null_permutation": "grey", "null_matched": "lightgrey"}
    for j, (how, what) in enumerate(bars):
        xs, ys, lo, hi = [], [], [], []
        for i, r in enumerate(rows):
            s = r["shares"][how]
            if what == "observed":
                y, (a, b) = s["observed"], s["observed_ci95"]
            elif what in s:
                y, (a, b) = s[what]["mean"], s[what]["ci95"]
            else:
                continue
            xs.append(i + (j - len(bars) / 2 + 0.5) * width)
            ys.append(y)
            lo.append(y - a)
            hi.append(b - y)
        hatch = "//" if how == "top" else None
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=f"{how}: {what}",
               color=colours[what], hatch=hatch, edgecolor="black", linewidth=0.3)  # fmt: skip
    ax.set_xticks(range(len(rows)), [str(r["layer"]) for r in rows])
    title = f"top-{top_k} latents promote the answer ({position} token), with nulls"
    ax.set(xlabel="layer", ylabel="share of fact groups", ylim=(0, 1), title=title)
    ax.legend(fontsize=6, ncol=2)
    return fig


def summary_lines(result: InterpretResult) -> list[str]:
    top1 = np.mean([g["model_top1"] for g in result.groups])
    top10 = np.mean([g["model_top10"] for g in result.groups])
    n_prompts = sum(g["n_prompts"] for g in result.groups)
    lines = [f"{len(result.groups)} fact groups, {n_prompts} prompts; at the token before the "
             f"answer the model ranks its first token top-1 for {top1:.0%} of prompts, top-10 "
             f"for {top10:.0%}"]  # fmt: skip
    for p, rows in result.layers.items():
        for r in rows:
            para = result.maps[p]["paraphrase_cosine"][r["layer"]]
            for how in sel.SELECTIONS:
                s = r["shares"][how]
                perm = s.get("null_permutation", {}).get("mean")
                lines.append(f"{p} token, layer {r['layer']}, {how} selection: the latents "
                             f"promote the answer for {s['observed']:.0%} of groups (permutation "
                             f"null {_pct(perm)}, density-matched null "
                             f"{_pct(s['null_matched']['mean'])}); generic latents: "
                             f"{[g['latent'] for g in s['generic_latents']][:5]}")  # fmt: skip
            cells = ", ".join(f"{k} {_num(v['mean'])}" for k, v in para.items())
            lines.append(f"{p} token, layer {r['layer']}: cosine of codes, {cells}")
    lens = result.logit_lens
    if lens is not None:
        for kind, first in lens["earliest_layer"].items():
            final = lens["layers"][-1][kind]["residual"].get("top10")
            lines.append(f"logit lens, {kind}: the model's top-10 share {_pct(final)}; first "
                         f"block reaching half of it: {first}")  # fmt: skip
    return lines


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"
