"""What every figure of the layer decomposition means (written beside the numbers)."""

DEFINITIONS: dict[str, str] = {
    "folds": "K folds by document (crosslayer.crossfit.grouped_folds over all store rows, "
    "crossfit.n_folds, seed): every row is predicted by fits that never saw its document",
    "ev": "variance-weighted explained variance of the pooled out-of-fold predictions: "
    "1 - sum_ij (y - yhat)^2 / sum_ij (y_ij - mean_j)^2 (mean_j over all scored rows)",
    "ev_standardised": "the same with every dimension scaled to unit variance: the mean over "
    "dimensions of 1 - SSE_j / SST_j",
    "ci95": "2.5 and 97.5 percentiles of ev over document-bootstrap resamples (documents drawn "
    "with replacement): the estimate's formula with each document counted as often as drawn, "
    "1 - sum_d w_d SSE_d / sum_d w_d SST_d; the fits, their out-of-fold predictions and the "
    "full-sample mean_j that SST is centred on are kept, not recomputed per resample",
    "ev_standardised_ci95": "the same for ev_standardised",
    "ev_without_top_dim": "ev without the dimension of largest variance",
    "top_dim_share": "share of the layer's total variance in its largest dimension (top_dim)",
    "mean": "per-dimension mean of the training folds",
    "linear": "ridge on the current row's source activations; one relative alpha per layer "
    "and fold (Ridge(alpha * n_train) on standardised X), chosen by leave-one-fold-out CV "
    "inside the training folds on the summed squared error",
    "token": "linear plus the token's mean residual on the training folds, shrunk by N/(N + "
    "lambda) (lambda per dimension and fold by inner CV; unseen tokens: linear). With X the "
    "embeddings, the ceiling of any function of the current embedding",
    "context_k": "ridge (as linear) on the current row and the k previous rows of its context "
    "(crosslayer.crossfit.lagged: zeros and a presence flag where a lag would cross the "
    "context start); with lag_rank r the lags enter as their top-r principal components",
    "rest": "1 - the best of linear, token, context_k: what needs longer context or is computed "
    "on the way",
    "ce_loss_recovered": "(CE_mean_ablation - CE_spliced) / (CE_mean_ablation - CE_clean), "
    "next-token CE on the sampled contexts with the predictor's out-of-fold output in place "
    "of the layer at every text position; mean ablation = the layer's mean over all store "
    "rows (SAELens's definition)",
    "kl": "mean over scored positions of KL(clean next-token distribution || spliced)",
}
