"""L-BFGS for many independent problems at once, each with its own history, step and stop.

``torch.optim.LBFGS`` treats a batch of problems as one long vector: one line search, one
stopping rule, so a feature's solution depends on the features that share its batch. Here
every column of ``u [p, k]`` is its own problem. The direction (two-loop recursion), the
backtracking Armijo line search and the gradient-tolerance stop are all per column; columns
that converge leave the active set, so later iterations cost only what is still running.
The batch only shares matrix products, so a column's iterates do not depend on the others
(up to float rounding of those products).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from crosslayer.metrics import colsum

# evaluate(u [p, k'], cols [k']) -> (loss [k'] float64, grad [p, k']) for those columns.
Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LBFGSResult:
    u: torch.Tensor  # [p, k] solutions
    converged: torch.Tensor  # [k] bool: max |grad| <= tol reached
    n_iter: torch.Tensor  # [k] iterations taken
    grad_max: torch.Tensor  # [k] max |grad| at the returned point


def batched_lbfgs(
    evaluate: Objective,
    u0: torch.Tensor,
    *,
    tol: float,
    max_iter: int,
    history: int = 10,
    max_backtracks: int = 30,
    loss_noise: float = 1e-12,
    precond: torch.Tensor | None = None,
) -> LBFGSResult:
    """Minimise ``k`` independent smooth convex objectives; column ``j`` stops when
    ``max |∂f_j/∂u_j| <= tol`` (converged), after ``max_iter`` iterations, or when its line
    search finds no acceptable step (not converged).

    A step is accepted on the Armijo condition, or, as Hager and Zhang's approximate Wolfe
    condition, when the loss rose by no more than its rounding (``loss_noise · |f|``) and the
    directional derivative is still ``<= 0.8 |g·d|`` (on a quadratic: a decrease). Near the
    optimum a float32 loss cannot resolve the decrease of a step; its gradient still can.

    ``precond [p, k]``: a positive diagonal approximation of each column's inverse Hessian.
    It becomes the initial Hessian of the two-loop recursion (scaled by ``s·y / y·D y``, as
    Nocedal and Wright's diagonal scaling) and the first step is ``-D g``: on problems whose
    curvature differs by orders of magnitude between coordinates (a ridge penalty over a
    spectrum of eigenvalues) this cuts the iterations several-fold.
    """
    p, k = u0.shape
    dev = u0.device
    u = u0.clone()
    all_cols = torch.arange(k, device=dev)
    f, g = evaluate(u, all_cols)
    S = torch.zeros(history, p, k, dtype=u.dtype, device=dev)
    Y = torch.zeros_like(S)
    rho = torch.zeros(history, k, dtype=torch.float64, device=dev)
    gamma = torch.ones(k, dtype=u.dtype, device=dev)
    D = None if precond is None else precond.to(u.dtype)
    n_iter = torch.zeros(k, dtype=torch.long, device=dev)
    gmax = g.abs().amax(0)
    done = gmax <= tol
    converged = done.clone()
    slot = 0
    for _ in range(max_iter):
        act = (~done).nonzero().squeeze(1)
        if act.numel() == 0:
            break
        ga = g[:, act]
        Da = None if D is None else D[:, act]
        d = _two_loop(ga, S[:, :, act], Y[:, :, act], rho[:, act], gamma[act], slot, history, Da)
        gtd = colsum(ga * d)
        not_descent = gtd >= 0  # only possible after round-off; fall back to steepest descent
        if not_descent.any():
            d[:, not_descent] = -ga[:, not_descent]
            gtd = torch.where(not_descent, -colsum(ga * ga), gtd)
        # The first step of a column has no curvature estimate: a step of length ~1/||g||
        # (with a preconditioner, -D g is already a Newton-like step).
        first = (1.0 / ga.abs().sum(0)).clamp(max=1.0) if D is None else torch.ones_like(gamma[act])
        step = torch.where(n_iter[act] == 0, first, torch.ones_like(gamma[act])).double()
        f_new = torch.empty_like(f[act])
        g_new = torch.empty_like(ga)
        pending = torch.ones(act.numel(), dtype=torch.bool, device=dev)
        for _ in range(max_backtracks):
            idx = pending.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            u_try = u[:, act[idx]] + step[idx].to(u.dtype) * d[:, idx]
            f_try, g_try = evaluate(u_try, act[idx])
            f0 = f[act[idx]]
            armijo = f_try <= f0 + 1e-4 * step[idx] * gtd[idx]
            slope = colsum(g_try * d[:, idx])
            approx = (f_try <= f0 + loss_noise * f0.abs()) & (slope <= -0.8 * gtd[idx])
            ok = armijo | approx
            f_new[idx[ok]], g_new[:, idx[ok]] = f_try[ok], g_try[:, ok]
            pending[idx[ok]] = False
            step[idx[~ok]] *= 0.5
        stalled = act[pending]  # no decrease found: stop them, flagged as not converged
        done[stalled] = True
        moved = ~pending
        cols = act[moved]
        s = step[moved].to(u.dtype) * d[:, moved]
        y = g_new[:, moved] - g[:, cols]
        sy = colsum(s * y)
        yy = colsum(y * y)
        yDy = yy if D is None else colsum(y * D[:, cols] * y)
        # Keep a pair only with positive curvature; otherwise the slot holds a no-op (rho 0).
        good = sy > 1e-10 * yy.sqrt() * colsum(s * s).sqrt()
        S[slot][:, cols], Y[slot][:, cols] = s, y
        rho[slot][cols] = torch.where(good, 1.0 / sy.clamp(min=1e-300), torch.zeros_like(sy))
        gamma[cols] = torch.where(good, (sy / yDy.clamp(min=1e-300)).to(u.dtype), gamma[cols])
        if stalled.numel():
            rho[slot][stalled] = 0.0
        slot = (slot + 1) % history
        u[:, cols] += s
        f[cols], g[:, cols] = f_new[moved], g_new[:, moved]
        n_iter[act] += 1
        gmax[cols] = g[:, cols].abs().amax(0)
        now = gmax[cols] <= tol
        converged[cols[now]] = True
        done[cols[now]] = True
    return LBFGSResult(u, converged, n_iter, gmax)


def _two_loop(
    g: torch.Tensor,
    S: torch.Tensor,
    Y: torch.Tensor,
    rho: torch.Tensor,
    gamma: torch.Tensor,
    slot: int,
    history: int,
    D: torch.Tensor | None = None,
) -> torch.Tensor:
    """``-H g`` per column from the last ``history`` pairs (newest at ``slot - 1``); the
    initial Hessian is ``gamma · D`` (``D`` diagonal, or the identity)."""
    q = g.clone()
    order = [(slot - 1 - i) % history for i in range(history)]  # newest first
    alphas = []
    for i in order:
        a = (rho[i] * colsum(S[i] * q)).to(q.dtype)
        q -= a * Y[i]
        alphas.append(a)
    r = gamma * q if D is None else gamma * D * q
    for i, a in zip(reversed(order), reversed(alphas), strict=True):
        b = (rho[i] * colsum(Y[i] * r)).to(r.dtype)
        r += S[i] * (a - b)
    return -r
