"""Latent interpretation on PARAREL facts (study B, experiment 3).

Each prompt has ``[MASK]`` filled with the gold answer, BOS first. Latents are read at the
first answer token ("answer"), as the study did, and optionally at the token before it
("before"), where the model has to predict the answer. The study observed that the most
active latents "do not always correspond to the target token"; this is quantified as the share
of fact groups whose top latents promote the answer's first token through the unembedding,
next to whether the model itself predicts that token at the position before it. (At the answer
position a latent that promotes the answer would be predicting a repeat, so the "before"
position is where promotion is expected.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from crosslayer.errors import CrosslayerError
from crosslayer.experiments.latents import LatentInfo, describe, logit_directions, to_html
from crosslayer.experiments.output import heatmap, write_results
from crosslayer.experiments.pararel import Fact, read_facts
from crosslayer.experiments.reps import SaeSpec, check_layers, sae_sites, sequence_reps
from crosslayer.experiments.similarity import cosine_matrix
from crosslayer.model import LoadedModel
from crosslayer.provenance import versions


class InterpretConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    facts: str
    relation: str | None = None
    n_groups: int | None = 100
    layers: list[int]
    top_k: int = 10
    before: bool = False
    promote_k: int = 20
    sae_on_residual: bool = False
    store: str | None = None


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
    latents: list[LatentInfo] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "model": self.model, "versions": versions(),
                "groups": self.groups, "layers": self.layers, "maps": self.maps,
                "latents": [x.to_dict() for x in self.latents]}  # fmt: skip


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
) -> InterpretResult:
    """Top latents per fact group on every layer with an SAE, with their descriptions."""
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
        from crosslayer.store import open_store

        store = open_store(store)
    config = InterpretConfig(
        facts=str(facts) if isinstance(facts, str | Path) else "python", relation=relation,
        n_groups=n_groups, layers=sae_layers, top_k=top_k, before=before, promote_k=promote_k,
        sae_on_residual=sae_on_residual,
        store=None if store is None else str(store.path),
    ).model_dump()  # fmt: skip

    positions = ["answer", "before"] if before else ["answer"]
    codes: dict[str, dict[int, list[torch.Tensor]]] = {p: {x: [] for x in sae_layers}
                                                       for p in positions}  # fmt: skip
    prompt_group, answer_tok, ranks = [], [], []
    for g, group in enumerate(groups):
        for fact in group:
            ids, pos = answer_position(model, fact)
            if pos == 0:
                raise CrosslayerError(f"{fact.prompt!r} starts with the answer and the tokenizer "
                                      "has no BOS", "use a model with a BOS token")  # fmt: skip
            reps = sequence_reps(model, ids, sae_layers, sites)["sae"]
            for p in positions:
                at = pos if p == "answer" else pos - 1
                for x in sae_layers:
                    codes[p][x].append(reps[x][at])
            prompt_group.append(g)
            answer_tok.append(ids[pos])
            ranks.append(_model_rank(model, ids, pos))
    pg, ranks_a = np.array(prompt_group), np.array(ranks)

    group_rows: list[dict[str, Any]] = []
    for g, group in enumerate(groups):
        r = ranks_a[pg == g]
        group_rows.append({"group": g, "prompt": group[0].prompt, "answer": group[0].answer,
                           "relation": group[0].relation, "n_prompts": len(group),
                           "model_top1": float(np.mean(r == 0)),
                           "model_top10": float(np.mean(r < 10))})  # fmt: skip
    model_predicts = np.array([row["model_top10"] >= 0.5 for row in group_rows])

    layers_out: dict[str, list[dict[str, Any]]] = {}
    maps: dict[str, dict[str, Any]] = {}
    wanted: dict[int, set[int]] = {x: set() for x in sae_layers}
    gen = torch.Generator().manual_seed(0)
    for p in positions:
        stacked = {x: torch.stack(codes[p][x]) for x in sae_layers}  # [n_prompts, d_sae]
        layers_out[p] = []
        for x in sae_layers:
            means = torch.stack([stacked[x][pg == g].mean(0) for g in range(len(groups))])
            top = means.topk(top_k, dim=-1)
            promotes = _promotes(sites[x], model, top.indices, pg, answer_tok, promote_k)
            # chance level: the same test with random latents in place of each group's top ones
            rand = torch.randint(0, means.shape[1], top.indices.shape, generator=gen)
            chance = _promotes(sites[x], model, rand, pg, answer_tok, promote_k)
            wanted[x].update(top.indices.flatten().tolist())
            layers_out[p].append({
                "layer": x, "hook": sites[x].hook,
                "top_latents": top.indices.tolist(), "top_values": top.values.tolist(),
                "promotes_answer": promotes.tolist(),
                "share_promoting": float(promotes.mean()),
                "share_promoting_random_latents": float(chance.mean()),
                "share_promoting_when_model_predicts": _share(promotes, model_predicts),
                "share_promoting_when_not": _share(promotes, ~model_predicts),
                "mean_l0": float((stacked[x] > 0).sum(-1).float().mean()),
            })  # fmt: skip
        maps[p] = {
            "topic_by_topic": {x: cosine_matrix(torch.stack(
                [stacked[x][pg == g].mean(0) for g in range(len(groups))])) for x in sae_layers},
            "prompt_by_prompt": {x: cosine_matrix(stacked[x]) for x in sae_layers},
            "layer_by_layer": _layer_by_layer(stacked, sae_layers),
        }  # fmt: skip
    latents = describe(model, sites, {x: sorted(v) for x, v in wanted.items()}, store=store,
                       n_contexts=n_contexts)  # fmt: skip
    result = InterpretResult(config, group_rows, layers_out, maps, latents, model.identity)
    if out is not None:
        write_results(out, result.to_dict(), _figures(result, groups),
                      {"latents.html": to_html(latents)})  # fmt: skip
    return result


def _model_rank(model: LoadedModel, ids: list[int], pos: int) -> int:
    """Rank (0 = top) of the answer's first token in the model's prediction before it."""
    with torch.inference_mode():
        logits = model.model(input_ids=torch.tensor([ids[:pos]], device=model.device)).logits
    last = logits[0, -1].float()
    return int((last > last[ids[pos]]).sum())


def _promotes(site: Any, model: LoadedModel, top: torch.Tensor, prompt_group: np.ndarray,
              answer_tok: list[int], k: int) -> np.ndarray:  # fmt: skip
    """Per group: does any of its top latents rank an answer token among its ``k`` most
    promoted tokens? (A group's prompts may tokenise the answer differently; any counts.)"""
    out = np.zeros(len(top), bool)
    for g, latents in enumerate(top.tolist()):
        promoted = logit_directions(site, model, latents).topk(k, dim=-1).indices
        answers = {answer_tok[i] for i in np.flatnonzero(prompt_group == g)}
        out[g] = bool(np.isin(promoted.numpy(), list(answers)).any())
    return out


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
    for p, rows in result.layers.items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar([str(r["layer"]) for r in rows], [r["share_promoting"] for r in rows])
        ax.set(
            xlabel="layer",
            ylabel="share of fact groups",
            ylim=(0, 1),
            title=f"top-{result.config['top_k']} latents promote the answer ({p} token)",
        )
        figs[f"promotes_{p}"] = fig
        for name in ("topic_by_topic", "prompt_by_prompt"):
            per_layer = result.maps[p][name]
            k = len(per_layer)
            fig, axes = plt.subplots(1, k, figsize=(4 * k, 3.8), squeeze=False)
            for ax, (x, m) in zip(axes[0], per_layer.items(), strict=True):
                heatmap(ax, m, f"layer {x}", answers if name == "topic_by_topic" else None)
            fig.suptitle(f"{name.replace('_', ' x ')} cosine of SAE latents ({p} token)")
            figs[f"{name}_{p}"] = fig
        if result.maps[p]["layer_by_layer"] is not None:
            fig, ax = plt.subplots(figsize=(4.5, 4))
            heatmap(ax, result.maps[p]["layer_by_layer"], f"layer x layer ({p} token)",
                    [str(r["layer"]) for r in rows])  # fmt: skip
            figs[f"layer_by_layer_{p}"] = fig
    return figs


def summary_lines(result: InterpretResult) -> list[str]:
    top10 = np.mean([g["model_top10"] for g in result.groups])
    lines = [f"{len(result.groups)} fact groups; the model ranks the answer in its top 10 "
             f"before it for {top10:.0%} of prompts"]  # fmt: skip
    for p, rows in result.layers.items():
        for r in rows:
            lines.append(f"{p} token, layer {r['layer']}: top latents promote the answer for "
                         f"{r['share_promoting']:.0%} of groups (random latents: "
                         f"{r['share_promoting_random_latents']:.0%})")  # fmt: skip
    return lines
