"""Study B experiment 3: PARAREL reading, answer positions, top latents, promotion, links."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from crosslayer.cli import main
from crosslayer.errors import CrosslayerError
from crosslayer.experiments.interpret import answer_forward, answer_position, run_interpret
from crosslayer.experiments.latents import PromotedTokens, describe, logit_directions
from crosslayer.experiments.pararel import Fact, read_facts
from crosslayer.experiments.reps import SaeSite
from crosslayer.model import tiny_model
from crosslayer.store import collect
from tests.test_layers import make_sae


@pytest.fixture(scope="module")
def lm():
    return tiny_model(n_layers=3, d_model=64)


def write(tmp_path, groups) -> str:
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(groups))
    return str(path)


def test_reads_pararel_and_filters(shared_data):
    groups = read_facts(shared_data / "pararel" / "data_nm.json", relation="P101", n_groups=5)
    assert len(groups) == 5 and groups[0][0].answer == "logic"
    assert groups[0][0].text == "Alan Turing works in the field of logic."
    other = read_facts(shared_data / "pararel" / "data_11.json", n_groups=2)
    assert len(other) == 2


@pytest.mark.parametrize(
    ("groups", "kwargs", "message"),
    [
        ([[["No mask here.", "x", "P1(a)"]]], {}, r"group 0 entry 0: '\[MASK\]' absent"),
        (
            [[["[MASK] rocks.", "x", "P1(a)"], ["A [MASK].", " ", "P1(a)"]]],
            {},
            "entry 1: empty answer",
        ),
        (
            [[["A [MASK].", "x", "P1(a)"]]],
            {"relation": "P9"},
            "relation 'P9' is not in .* one of P1",
        ),
        ([[["A [MASK].", "x"]]], {}, "group 0 entry 0 is not"),
    ],
)
def test_bad_facts_are_named(tmp_path, groups, kwargs, message):
    with pytest.raises(CrosslayerError, match=message):
        read_facts(write(tmp_path, groups), **kwargs)


def test_first_answer_token_position(lm):
    tok = lm.tokenizer
    fact = Fact(0, "Alan Turing works in the field of [MASK].", "logic", "P101")
    ids, pos = answer_position(lm, fact)
    prefix = tok("Alan Turing works in the field of", add_special_tokens=False).input_ids
    assert ids[0] == tok.bos_token_id and ids[1:pos] == prefix
    assert tok.decode(ids[pos:-1]).strip() == "logic"
    ids, pos = answer_position(lm, Fact(0, "[MASK] is the field of Alan.", "physics", "P101"))
    assert pos == 1 and tok.decode(ids[1:3]).startswith("ph")


def test_top_latents_promotion_and_links(lm, tmp_path):
    facts = [
        [
            Fact(0, "Turing works in [MASK].", "logic", "P"),
            Fact(0, "Turing studied [MASK].", "logic", "P"),
        ],
        [Fact(1, "Curie works in [MASK].", "physics", "P")],
    ]
    sae = make_sae("blocks.1.hook_mlp_out", d_sae=40)
    sae.cfg.metadata.neuronpedia_id = "gemma-2-2b/1-gemmascope-mlp-16k"
    answer_ids = {answer_position(lm, f)[0][answer_position(lm, f)[1]] for g in facts for f in g}
    w_u = lm.unembed().float()
    with torch.no_grad():  # every decoder row points at one answer token's unembedding
        sae.W_dec[:] = w_u[:, sorted(answer_ids)[0]]
    store = collect(
        lm,
        ["blocks.1.hook_mlp_out"],
        corpus="builtin:news",
        n_tokens=300,
        out=tmp_path / "store",
        context_len=32,
        progress=False,
    )
    res = run_interpret(
        lm, facts, {1: sae}, top_k=3, before=True, store=store, n_contexts=2, out=tmp_path / "o"
    )

    # top latents = argsort of the mean code of each group, computed independently
    codes = []
    for f in facts[0]:
        ids, pos = answer_position(lm, f)
        x = lm.run_with_hooks(torch.tensor([ids]), hooks=["blocks.1.hook_mlp_out"])
        codes.append(sae.encode(x["blocks.1.hook_mlp_out"][0, pos]).detach().numpy())
    mean = np.mean(codes, 0)
    row = res.layers["answer"][0]
    assert row["top_latents"][0] == list(np.argsort(-mean)[:3])
    # the answer token is promoted only where the group's answer is that token
    first = sorted(answer_ids)[0]
    expect = [
        any(answer_position(lm, f)[0][answer_position(lm, f)[1]] == first for f in g) for g in facts
    ]
    assert row["promotes_answer"] == expect
    info = res.latents[0]
    assert (
        info.neuronpedia == f"https://neuronpedia.org/gemma-2-2b/1-gemmascope-mlp-16k/{info.index}"
    )
    assert info.promoted[0][0] == lm.tokenizer.decode([first])
    all_codes = sae.encode(torch.as_tensor(store.activations("blocks.1.hook_mlp_out")[:])).detach()
    assert info.density == pytest.approx(float((all_codes[:, info.index] > 0).float().mean()))
    assert max(c["max"] for c in info.contexts) == pytest.approx(
        float(all_codes[:, info.index].max()), rel=1e-5
    )
    assert res.maps["before"]["topic_by_topic"][1].shape == (2, 2)
    # paraphrases: only group 0 has two prompts, so "same_fact" is the cosine of their codes
    para = res.maps["answer"]["paraphrase_cosine"][1]
    cos = float(np.dot(codes[0], codes[1]) / (np.linalg.norm(codes[0]) * np.linalg.norm(codes[1])))
    assert para["same_fact"]["mean"] == pytest.approx(cos, rel=1e-4)
    assert para["same_fact"]["n_pairs"] == 1
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert "prompt_by_prompt" not in saved["maps"]["answer"]  # n² cosines stay out of the JSON
    saved_para = saved["maps"]["answer"]["paraphrase_cosine"]["1"]
    assert saved_para["same_fact"]["mean"] == pytest.approx(para["same_fact"]["mean"])
    assert 0 <= res.groups[0]["model_top10"] <= 1
    # the lens of the last block is the model's own prediction of the answer
    lens = saved["logit_lens"]
    assert [e["layer"] for e in lens["layers"]] == list(range(lm.n_layers))
    seqs = [ids[: pos + 1] for g in facts for ids, pos in (answer_position(lm, f) for f in g)]
    ranks = answer_forward(lm, {}, seqs)[1]
    assert lens["layers"][-1]["answer"]["residual"]["top10"] == pytest.approx(np.mean(ranks < 10))
    shares = row["shares"]
    assert set(shares) == {"contrastive", "top"} and row["selection"] == "contrastive"
    assert row["share_promoting"] == shares["contrastive"]["observed"]
    assert {"null_permutation", "null_matched", "generic_latents"} <= set(shares["top"])
    for name in (
        "results.json",
        "latents.html",
        "promotes_answer.png",
        "topic_by_topic_before.png",
        "logit_lens.png",
    ):
        assert (tmp_path / "o" / name).is_file()


def test_cli_errors(tmp_path, capsys):
    facts = write(tmp_path, [[["A [MASK].", "x", "P1(a)"]]])
    assert main(["interpret", "--facts", facts, "--out", str(tmp_path / "o")]) == 2
    assert "needs SAEs" in capsys.readouterr().err
    assert (
        main(
            [
                "interpret",
                "--facts",
                facts,
                "--relation",
                "P7",
                "--sae",
                "1=x",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "relation 'P7' is not in" in capsys.readouterr().err


def slow_store_view(lm, sae, store, hook, index, n_contexts, window=8):
    """The original dense algorithm: encode the whole store, sort every token per latent."""
    acts = sae.encode(torch.as_tensor(store.activations(hook)[:])).detach().numpy()[:, index]
    ctx, pos, tokens = store.context_ids, store.positions, store.tokens
    contexts = []
    for row in np.argsort(-acts, kind="stable")[:n_contexts]:
        if acts[row] <= 0:
            break
        same = ctx == ctx[row]
        near = np.flatnonzero(same & (pos >= pos[row] - window) & (pos <= pos[row] + 2))
        contexts.append(
            ([lm.tokenizer.decode([int(t)]) for t in tokens[near]], acts[near], acts[row])
        )
    return float(np.mean(acts > 0)), contexts


def test_fast_paths_match_slow_references(lm, tmp_path):
    """Batched forwards, chunked promoted tokens and the sparse store pass agree with one
    prompt at a time, the full logit product and a dense sort over the store."""
    hooks = ["blocks.1.hook_resid_post", "blocks.2.hook_mlp_out"]
    sites = {1: SaeSite(1, make_sae(hooks[0], d_sae=40), hooks[0], hooks[0]),
             2: SaeSite(2, make_sae(hooks[1], d_sae=40, seed=1), hooks[1], hooks[1])}  # fmt: skip
    facts = [
        Fact(0, "Turing works in the field of [MASK].", "logic", "P"),
        Fact(0, "[MASK] is what Turing studied.", "logic", "P"),
        Fact(1, "Curie works in [MASK].", "physics", "P"),
        Fact(1, "Marie Curie, the scientist, worked in [MASK] all her life.", "physics", "P"),
        Fact(2, "Darwin works in [MASK].", "biology", "P"),
    ]
    seqs = [ids[: pos + 1] for ids, pos in (answer_position(lm, f) for f in facts)]
    codes, ranks = answer_forward(lm, sites, seqs, batch_size=2)
    for i, f in enumerate(facts):
        ids, pos = answer_position(lm, f)
        acts = lm.run_with_hooks(torch.tensor([ids]), hooks=hooks)  # the whole prompt, alone
        for layer, s in sites.items():
            slow = s.sae.encode(acts[s.hook][0, pos - 1 : pos + 1]).detach()
            torch.testing.assert_close(codes[layer][i], slow, atol=1e-5, rtol=1e-4)
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([ids[:pos]])).logits[0, -1].double()
        assert ranks[i] == int((logits > logits[ids[pos]]).sum())

    fast = PromotedTokens(sites[1], lm, k=7, chunk=3)
    fast.ensure([5, 0, 33, 12])
    slow_top = logit_directions(sites[1], lm, [0, 5, 12, 33]).double().topk(7, dim=-1)
    for j, i in enumerate([0, 5, 12, 33]):
        assert fast.top(i)[0] == slow_top.indices[j].tolist()
        np.testing.assert_allclose(fast.top(i, 3)[1], slow_top.values[j, :3], rtol=1e-5)

    store = collect(lm, [hooks[0]], corpus="builtin:news", n_tokens=400,
                    out=tmp_path / "store", context_len=32, progress=False)  # fmt: skip
    wanted = [0, 3, 17, 39]
    infos = describe(lm, {1: sites[1]}, {1: wanted}, store=store, n_contexts=4, batch_size=64)
    for info in infos:
        density, contexts = slow_store_view(lm, sites[1].sae, store, hooks[0], info.index, 4)
        assert info.density == pytest.approx(density)
        assert len(info.contexts) == len(contexts) > 0
        for got, (tokens, acts, top) in zip(info.contexts, contexts, strict=True):
            assert got["tokens"] == tokens
            np.testing.assert_allclose(got["acts"], acts, rtol=1e-5, atol=1e-6)
            assert got["max"] == pytest.approx(float(top), rel=1e-5)


def test_before_position_leaves_out_bos(lm):
    """Where the answer starts the prompt the token before is BOS; "before" ignores it."""
    facts = [[Fact(0, "[MASK] is what Turing studied.", "logic", "P"),
              Fact(0, "Turing studied [MASK].", "logic", "P"),
              Fact(0, "Turing loved [MASK] a lot.", "logic", "P")]]  # fmt: skip
    sae = make_sae("blocks.1.hook_resid_post", d_sae=40)
    res = run_interpret(lm, facts, {1: sae}, top_k=4, before=True)
    row = res.layers["before"][0]
    assert row["n_prompts_used"] == 2 and res.layers["answer"][0]["n_prompts_used"] == 3
    assert res.groups[0]["n_answer_first"] == 1
    codes = []
    for f in facts[0][1:]:
        ids, pos = answer_position(lm, f)
        x = lm.run_with_hooks(torch.tensor([ids]), hooks=["blocks.1.hook_resid_post"])
        codes.append(sae.encode(x["blocks.1.hook_resid_post"][0, pos - 1]).detach().numpy())
    assert row["top_latents"][0] == list(np.argsort(-np.mean(codes, 0))[:4])
