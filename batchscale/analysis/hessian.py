"""The largest eigenvalue of the training-loss Hessian, by power iteration on Hessian-vector
products (Pearlmutter's double backward), as a measure of the sharpness of a minimum.

    batchscale analyze hessian runs/mini/trivial/b128/seed0 [--images 1000 --tol 1e-3]

The loss is the mean cross-entropy (without the weight-decay term, which would add
weight_decay to every eigenvalue) on a fixed, class-balanced sample of the run's training
images, without augmentation and with batch norm in eval mode (running statistics), so the loss
is one deterministic function of the weights. Power iteration converges to the eigenvalue of
largest magnitude; it stops when two successive Rayleigh quotients differ by less than
`tol` × |λ| or after `max_iters` iterations, and says which happened.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from batchscale import files
from batchscale.analysis.landscape import load_run, stacked

RESULT_FILE = "hessian.json"
DEFAULT_TOL, DEFAULT_MAX_ITERS, DEFAULT_IMAGES = 1e-3, 100, 1000

# A loss as a sum of weighted chunks, so that a sample larger than memory allows is handled.
LossChunks = Callable[[], Iterable[tuple[torch.Tensor, float]]]


def hessian_vector_product(loss_chunks: LossChunks, params: list[torch.Tensor],
                           vector: list[torch.Tensor]) -> list[torch.Tensor]:
    """H v for the loss Σ weight × chunk_loss, accumulated chunk by chunk."""
    product = [torch.zeros_like(p) for p in params]
    for loss, weight in loss_chunks():
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vector, strict=True))
        parts = torch.autograd.grad(dot, params, allow_unused=True)
        for total, part in zip(product, parts, strict=True):
            if part is not None:
                total.add_(part.detach(), alpha=weight)
    return product


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return sum((x.double() * y.double()).sum() for x, y in zip(a, b, strict=True)).item()


@dataclass
class EigenResult:
    eigenvalue: float
    iterations: int
    converged: bool
    tol: float
    max_iters: int
    history: list[float]


def top_eigenvalue(loss_chunks: LossChunks, params: list[torch.Tensor], tol: float = DEFAULT_TOL,
                   max_iters: int = DEFAULT_MAX_ITERS, seed: int = 0) -> EigenResult:
    """Power iteration from a seeded random unit vector."""
    generator = torch.Generator().manual_seed(seed)
    vector = [torch.randn(p.shape, generator=generator).to(p) for p in params]
    history: list[float] = []
    for _ in range(max_iters):
        norm = _dot(vector, vector) ** 0.5
        vector = [v / norm for v in vector]
        product = hessian_vector_product(loss_chunks, params, vector)
        history.append(_dot(vector, product))  # Rayleigh quotient of a unit vector
        if len(history) > 1 and abs(history[-1] - history[-2]) <= tol * abs(history[-1]):
            return EigenResult(history[-1], len(history), True, tol, max_iters, history)
        if _dot(product, product) == 0:
            return EigenResult(0.0, len(history), True, tol, max_iters, history)
        vector = product
    return EigenResult(history[-1], len(history), False, tol, max_iters, history)


def model_loss_chunks(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      chunk: int) -> LossChunks:
    """Mean cross-entropy over (images, labels), as chunks weighted by their share."""
    def chunks():
        for start in range(0, len(labels), chunk):
            x, y = images[start:start + chunk], labels[start:start + chunk]
            yield F.cross_entropy(model(x).float(), y), len(y) / len(labels)
    return chunks


def analyze_run(run_dir: Path, images: int = DEFAULT_IMAGES, tol: float = DEFAULT_TOL,
                max_iters: int = DEFAULT_MAX_ITERS, seed: int = 0, device: str = "auto",
                chunk: int = 500) -> dict:
    """Top Hessian eigenvalue of a run's final weights; written to RUN_DIR/hessian.json."""
    run = load_run(run_dir, device)
    sample = run.train_sample(images, seed)
    x, y = stacked(sample)
    model = run.model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    result = top_eigenvalue(model_loss_chunks(model, x, y, chunk), params, tol, max_iters, seed)
    record = {"run": str(run_dir), "batch_size": run.cfg.batch_size, "images": len(sample),
              "sample_seed": seed, "bn_mode": "eval", "loss": "mean cross-entropy, no weight "
              "decay", **asdict(result)}
    files.write_text(Path(run_dir) / RESULT_FILE, json.dumps(record, indent=2) + "\n")
    return record


@dataclass
class LanczosResult:
    """The largest (algebraic) eigenvalue by Lanczos: `eigenvalue` is the top Ritz value,
    `residual` the bound |β_k s_k| on ‖H y − θ y‖ of its Ritz vector y (an eigenvalue of H lies
    within it of θ), `converged` whether residual ≤ tol × |θ|."""

    eigenvalue: float
    smallest: float  # the smallest Ritz value (negative curvature, if any)
    residual: float
    iterations: int
    converged: bool
    tol: float
    max_iters: int
    history: list[float]


def top_positive_eigenvalue(loss_chunks: LossChunks, params: list[torch.Tensor],
                            tol: float = 1e-2, max_iters: int = 20,
                            seed: int = 0) -> LanczosResult:
    """The largest algebraic eigenvalue of the Hessian (not the largest in magnitude, which power
    iteration finds and which is negative at a saddle), by the Lanczos iteration with full
    re-orthogonalization from a seeded random vector. Converged when the residual bound of the
    top Ritz pair is at most `tol` × |θ| (or the Krylov space is exhausted)."""
    generator = torch.Generator().manual_seed(seed)
    vector = [torch.randn(p.shape, generator=generator).to(p) for p in params]
    norm = _dot(vector, vector) ** 0.5
    basis = [[v / norm for v in vector]]
    alphas: list[float] = []
    betas: list[float] = []
    history: list[float] = []
    theta = smallest = residual = 0.0
    for k in range(max_iters):
        q = basis[-1]
        w = hessian_vector_product(loss_chunks, params, q)
        alpha = _dot(q, w)
        alphas.append(alpha)
        for b in basis:  # full re-orthogonalization (twice is enough)
            c = _dot(b, w)
            w = [x - c * y for x, y in zip(w, b, strict=True)]
        for b in basis:
            c = _dot(b, w)
            w = [x - c * y for x, y in zip(w, b, strict=True)]
        beta = _dot(w, w) ** 0.5
        size = k + 1
        tri = torch.zeros(size, size, dtype=torch.float64)
        for i in range(size):
            tri[i, i] = alphas[i]
            if i + 1 < size:
                tri[i, i + 1] = tri[i + 1, i] = betas[i]
        values, vectors = torch.linalg.eigh(tri)
        theta, smallest = values[-1].item(), values[0].item()
        residual = abs(beta * vectors[-1, -1].item())
        history.append(theta)
        scale = max(abs(theta), 1e-30)
        if residual <= tol * scale or beta <= 1e-12 * max(abs(a) for a in alphas):
            return LanczosResult(theta, smallest, residual, size, True, tol, max_iters, history)
        betas.append(beta)
        basis.append([x / beta for x in w])
    return LanczosResult(theta, smallest, residual, len(history), False, tol, max_iters, history)
