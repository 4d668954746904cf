"""What the report shows beside our numbers: metric definitions and the studies' own figures.

Definitions come from the modules that compute the numbers where those modules export them
(:data:`crosslayer.metrics.DEFINITIONS`, a probe result's ``definitions``); the rest are
written here once, in the words of ``docs/metrics.md`` and ``docs/study_b.md``.
"""

from __future__ import annotations

from typing import Any

from crosslayer.metrics import DEFINITIONS

REGRESSION_DEFINITIONS: dict[str, str] = dict(DEFINITIONS)

PROBE_DEFINITIONS: dict[str, str] = {
    "balanced_accuracy": "out-of-fold (TPR + TNR) / 2 of a class-balanced logistic probe from "
    "the source layer (folds by document, C per feature); a feature is active on a token when "
    "its activation is > 0",
    "auroc": "out-of-fold area under the ROC curve of the logistic probe's logit (Mann-Whitney), "
    "folds by document",
    "r2": "out-of-fold 1 - Σ(f - f̂)² / Σ(f - f̄)² of a ridge probe predicting the feature's "
    "value, alpha per feature by grouped inner CV",
    "density": "share of tokens (all folds) on which the feature is active",
    "token_r2": "out-of-fold token-lookup R²: the mean of the feature for the current token id "
    "in the other folds' documents, shrunk toward the feature mean; about 0 for a feature the "
    "token does not determine (its permutation null is in features/<sae>.parquet)",
    "study_protocol_accuracy": "the study's protocol: active = value > 0.1, classes balanced by "
    "subsampling, 80/20 split, sklearn LogisticRegression on raw inputs, plain accuracy",
    "diff_mean": "mean(baseline) - mean(residual) with a 95% percentile-bootstrap interval; "
    "p: two-sided Mann-Whitney U test",
}

LAYERS_DEFINITIONS: dict[str, str] = {
    "adjacent_layer_cosine": "mean over prompts and tokens of cos(h_L, h_L+1) between the "
    "representations of consecutive layers",
    "linear_cka": "linear centred kernel alignment between two layers' activations over the same "
    "tokens (basis-free, 1 = same geometry)",
    "standardised_cka": "linear CKA after z-scoring every dimension over the corpus (raw CKA is "
    "dominated by a few massive dimensions); CIs: bootstrap over contexts, bias-corrected",
    "space": "raw, centred (minus the layer's corpus mean) or standardised (centred, each "
    "dimension divided by its sd); the mean and sd come from the store, else the prompts",
    "depth_curve": "held-out explained variance (per-dimension means) of a ridge map from the "
    "source hook to each resid_post",
}

CONTRAST_DEFINITIONS: dict[str, str] = {
    "mean_diff": "mean over items of cos(q, direct) - cos(q, evasive), 95% percentile-bootstrap CI",
    "p_adjusted": "two-sided Wilcoxon signed-rank p, Benjamini-Hochberg adjusted across layers",
    "auroc": "AUROC of the 2n cosines labelled direct (1) / evasive (0)",
    "win_rate": "share of items whose direct answer is closer to the question (ties count ½)",
    "likelihood": "the model's mean log-probability per answer token given the question",
    "adds_to_likelihood": "10-fold out-of-fold log-loss of a paired logistic model with "
    "Δlog-likelihood alone vs Δlog-likelihood + Δcosine (one-sided Wilcoxon, BH adjusted)",
    "match": "own-question difference minus the same difference against the other items' "
    "questions (the mismatched-question control): what is specific to the answer's question",
    "auroc_paired": "share of items whose direct value beats their evasive one (ties ½)",
    "pmi": "mean log-probability per answer token with the question minus without it",
    "adds_to_pmi": "as adds_to_likelihood, with ΔPMI, Δunconditional log-likelihood and "
    "Δanswer length as the baseline",
    "space": "raw, centred (minus the layer's mean) or standardised (also divided by its sd); "
    "mean and sd from the store, else the items' own tokens",
}

INTERPRET_DEFINITIONS: dict[str, str] = {
    "share_promoting": "share of fact groups whose selected latents rank an answer token among "
    "the 20 tokens their decoder direction promotes most through the final norm "
    "((W_dec[i] * gain) @ W_U)",
    "share_promoting_null_permutation": "the same latents scored against other groups' answers",
    "share_promoting_null_matched": "random latents of matched firing density and decoder norm",
    "model_top10": "share of prompts where the model ranks the answer in its top 10 at the token "
    "before it",
}

# The studies' published figures and the protocol behind each (shared/design/SEED_NOTES.md).
STUDY_B_REFERENCE: dict[str, dict[str, Any]] = {
    "layers": {
        "figure": "layer × layer and token × token cosine heatmaps for one 14-token prompt; "
        "no statistic",
        "protocol": "Gemma 2 2B; Gemma Scope 16k MLP-output SAEs of all 26 layers applied to the "
        "residual stream (hidden_states), one prompt",
    },
    "contrast": {
        "figure": "layer × layer heatmaps of cos(question, direct), cos(question, evasive) and "
        "their difference; no statistic was computed",
        "protocol": "Gemma 2 2B; 10 hand-written topics; question = latents at its last token, "
        "answer = latents averaged over answer tokens (answer appended to the question); MLP "
        "SAEs on the residual stream",
    },
    "interpret": {
        "figure": "top-10 latents per topic shown as Neuronpedia dashboards; finding: the "
        "maximally active latents do not always correspond to the target token (not quantified)",
        "protocol": "Gemma 2 2B; PARAREL data_nm.json, first 100 groups of P101; [MASK] filled "
        "with the gold answer, BOS prepended; latents at the first answer token of every layer",
    },
}
