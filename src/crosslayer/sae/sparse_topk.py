"""TopK SAE training whose decoder and gradients touch only the k latents each row selects.

sae-lens's ``TopKTrainingSAE`` scatters the k selected activations into a dense ``[B, d_sae]``
matrix and multiplies it densely: forward, backward and the auxiliary loss take six
``[B, d] x [d, d_sae]`` products a step, of which only the encoder's forward needs every
latent (to choose the top k). :class:`SparseTopKTrainingSAE` keeps that one product dense and
does the rest on the selected ``[B, k]`` entries:

- decoder: ``F.embedding_bag`` over the selected decoder rows (a weighted sum of k rows);
- its gradient to the activations: the selected entries of ``grad_out @ W_dec.T`` only
  (``torch.sparse.sampled_addmm``);
- gradients to ``W_enc``, ``b_enc`` and ``W_dec``: each latent sums the rows that selected it
  (``embedding_bag`` over the rows grouped by latent); ``b_dec``'s through the input is
  ``-W_enc @ grad(b_enc)``, as the input itself takes no gradient.

The loss, its gradients and the trainer's view (``feature_acts``, ``hidden_pre``) are those
of the parent class up to float rounding (tested against it in float64). One thing is simpler
by design: with ``rescale_acts_by_decoder_norm`` sae-lens multiplies the selected
pre-activations by the decoder norms and the decoder divides them out again, so the
reconstruction is ``relu(pre) @ W_dec`` whatever the norms, and the gradient through the norms
is zero; here the norms only rank the latents. On 2 CPU cores a step of the default profile's
SAE (d 640, 2,048 latents, k 48, batch 512) is about twice as fast: benchmarks/results/sae_train.md.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from sae_lens import TopKTrainingSAE
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput

from crosslayer.numerics import quiet_csr

# The normalisations whose output side is the identity (sae-lens's aux loss refuses the rest).
_PLAIN_NORMS = ("none", "expected_average_only_in")


class Selection(NamedTuple):
    """The latents each row selected, ``idx [B, k]`` (ascending per row), and the same entries
    grouped by latent for the gradients: ``order`` sorts the flattened entries by latent,
    ``rows`` is each sorted entry's row, ``offsets [d_sae]`` where each latent's group starts."""

    idx: torch.Tensor
    order: torch.Tensor
    rows: torch.Tensor
    offsets: torch.Tensor

    @classmethod
    def top(cls, scores: torch.Tensor, k: int) -> Selection:
        """The ``k`` largest ``scores`` of each row (no gradient)."""
        idx = scores.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values
        flat = idx.flatten()
        order = torch.argsort(flat, stable=True)
        starts = torch.bincount(flat, minlength=scores.shape[1]).cumsum(0)
        offsets = torch.cat([starts.new_zeros(1), starts[:-1]])
        return cls(idx, order, order // k, offsets)

    def per_latent(self, src: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``[d_sae, d]``: for each latent, the sum of ``weights[b, j] * src[b]`` over the
        entries (b, j) that selected it (``S.T @ src`` for the sparse selection matrix S)."""
        w = weights.flatten()[self.order]
        return F.embedding_bag(self.rows, src, self.offsets, mode="sum", per_sample_weights=w)

    def sampled(self, a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
        """``(a @ b_t)[b, idx[b, j]]`` as ``[B, k]``, computing only those entries."""
        n, k = self.idx.shape
        crow = torch.arange(0, n * k + 1, k, device=a.device)
        with quiet_csr():
            mask = torch.sparse_csr_tensor(
                crow,
                self.idx.flatten(),
                a.new_zeros(n * k),
                (n, b_t.shape[1]),
                check_invariants=False,
            )
            return torch.sparse.sampled_addmm(mask, a, b_t).values().view(n, k)


class _SelectedPre(torch.autograd.Function):
    """``pre[b, idx[b, j]]`` where ``pre = (x - b_dec) @ W_enc + b_enc`` was computed without
    autograd; the backward pass sends gradient only through the selected entries. ``x`` (the
    step's input) takes no gradient, so ``b_dec``'s is ``-W_enc @ (b_enc's)``: no ``[B, d]``
    input gradient is formed. ``b_dec`` is None when it is not subtracted from the input."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        xc: torch.Tensor,
        W_enc: torch.Tensor,
        b_enc: torch.Tensor,
        b_dec: torch.Tensor | None,
        pre: torch.Tensor,
        sel: Selection,
    ) -> torch.Tensor:
        ctx.save_for_backward(xc, W_enc)
        ctx.sel = sel
        return pre.gather(1, sel.idx)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        xc, W_enc = ctx.saved_tensors
        sel: Selection = ctx.sel
        gw = sel.per_latent(xc, g).t() if ctx.needs_input_grad[1] else None
        gb = torch.zeros_like(W_enc[0]).index_add_(0, sel.idx.flatten(), g.flatten())
        g_dec = -(W_enc @ gb) if ctx.needs_input_grad[3] else None
        return None, gw, gb if ctx.needs_input_grad[2] else None, g_dec, None, None


class _SparseDecode(torch.autograd.Function):
    """``sum_j acts[b, j] * W_dec[idx[b, j]]``, the dense ``scatter(acts) @ W_dec``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, acts: torch.Tensor, W_dec: torch.Tensor, sel: Selection
    ) -> torch.Tensor:
        ctx.save_for_backward(acts, W_dec)
        ctx.sel = sel
        return F.embedding_bag(sel.idx, W_dec, mode="sum", per_sample_weights=acts)

    @staticmethod
    def backward(ctx: Any, go: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        acts, W_dec = ctx.saved_tensors
        sel: Selection = ctx.sel
        ga = sel.sampled(go, W_dec.t()) if ctx.needs_input_grad[0] else None
        gw = sel.per_latent(go, acts) if ctx.needs_input_grad[1] else None
        return ga, gw, None


class SparseTopKTrainingSAE(TopKTrainingSAE):
    """sae-lens's ``TopKTrainingSAE`` with a sparse training step (module docstring).

    Only ``training_forward_pass`` changes; the parameters, checkpoints, saved inference SAE
    (architecture ``topk``) and every inference method are the parent's. Settings the sparse
    step does not cover (an output-side normalisation, reshaped activations) use the
    parent's dense step.
    """

    def _sparse_ok(self) -> bool:
        return self.cfg.normalize_activations in _PLAIN_NORMS and (
            self.cfg.reshape_activations == "none"
        )

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        if not self._sparse_ok():
            return super().training_forward_pass(step_input)
        with torch.no_grad():
            x = self.process_sae_in(step_input.sae_in)
            pre = torch.addmm(self.b_enc, x, self.W_enc)
            norms = self.W_dec.norm(dim=-1) if self.cfg.rescale_acts_by_decoder_norm else None
            scores = pre * norms if norms is not None else pre
        sel = Selection.top(scores, self.cfg.k)
        vals = self._selected(x, pre, sel).relu()
        sae_out = self.run_time_activation_norm_fn_out(
            _SparseDecode.apply(vals, self.W_dec, sel) + self.b_dec
        )
        mse_loss = self.mse_loss_fn(sae_out, step_input.sae_in).sum(dim=-1).mean()
        aux = self._aux_loss(step_input, x, pre, scores, sae_out)

        with torch.no_grad():  # the dense views the trainer and the progress bar read
            acts = vals.detach() * norms[sel.idx] if norms is not None else vals.detach()
            feature_acts = torch.zeros_like(pre).scatter_(1, sel.idx, acts)
        return TrainStepOutput(
            sae_in=step_input.sae_in,
            sae_out=sae_out,
            feature_acts=feature_acts,
            hidden_pre=scores,
            loss=mse_loss + aux,
            losses={"mse_loss": mse_loss, "auxiliary_reconstruction_loss": aux},
        )

    def _selected(self, x: torch.Tensor, pre: torch.Tensor, sel: Selection) -> torch.Tensor:
        b_dec = self.b_dec if self.cfg.apply_b_dec_to_input else None
        return _SelectedPre.apply(x, self.W_enc, self.b_enc, b_dec, pre, sel)

    def _aux_loss(
        self,
        step_input: TrainStepInput,
        x: torch.Tensor,
        pre: torch.Tensor,
        scores: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> torch.Tensor:
        """sae-lens's TopK auxiliary loss (``calculate_topk_aux_loss``): the top ``d_in / 2``
        dead latents (by score) reconstruct the live latents' residual, scaled down when
        fewer latents are dead; on the selected entries only."""
        dead = step_input.dead_neuron_mask
        if dead is None or (num_dead := int(dead.sum())) == 0:
            return sae_out.new_tensor(0.0)
        k_aux = step_input.sae_in.shape[-1] // 2
        scale = min(num_dead / k_aux, 1.0)
        with torch.no_grad():
            sel = Selection.top(torch.where(dead[None], scores, -torch.inf), min(k_aux, num_dead))
        vals = self._selected(x, pre, sel)
        recons = _SparseDecode.apply(vals, self.W_dec, sel)
        residual = (step_input.sae_in - sae_out).detach()
        loss = (recons - residual).pow(2).sum(dim=-1).mean()
        return self.cfg.aux_loss_coefficient * scale * loss
