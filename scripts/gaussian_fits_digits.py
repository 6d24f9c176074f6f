"""How close can a Gaussian in weight space get to the digits NUTS reference? (docs/results/vi.md)

Fits the MAP of the default digits MLP posterior (L-BFGS on the full-data log-target from a prior
draw), takes the exact Hessian there, and evaluates the predictive of Gaussians around the MAP
against the shipped NUTS reference (bnn_bench/references/digits_mlp.npz): the MAP alone, the full
Laplace covariance H^-1, its diagonal (the marginals), 1 / diag(H) (a mean-field precision), and
rank-r + diagonal approximations of H^-1 (its r widest directions plus the remaining marginal
variance). One JSON line per seed: total variation (TV), NLL and accuracy per fit.

    PYTHONPATH=. .venv/bin/python scripts/gaussian_fits_digits.py --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bnn_bench import build, metrics  # noqa: E402
from bnn_bench.config import register_configs  # noqa: E402
from bnn_bench.evaluate import particle_outputs  # noqa: E402
from bnn_bench.posterior import make_log_target  # noqa: E402

REFERENCE = ROOT / "bnn_bench" / "references" / "digits_mlp.npz"


def fit_map(neg_log_post, theta, steps: int):
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(neg_log_post)

    @jax.jit
    def step(theta, state):
        value, grad = value_and_grad(theta, state=state)
        updates, state = opt.update(
            grad, state, theta, value=value, grad=grad, value_fn=neg_log_post
        )
        return optax.apply_updates(theta, updates), state, jnp.linalg.norm(grad)

    state = opt.init(theta)
    for _ in range(steps):
        theta, state, grad_norm = step(theta, state)
    return theta, float(grad_norm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 16, 64, 256])
    parser.add_argument("--map-steps", type=int, default=3000)
    args = parser.parse_args()
    reference = np.load(REFERENCE)["probs"]
    register_configs()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["logger=none"])
    data = build.load_data(cfg)
    post = build.posterior(cfg, data)
    n = data.n_train
    x, y, mask = jnp.asarray(data.x_train), jnp.asarray(data.y_train), jnp.ones(n, bool)
    target = make_log_target(post, n)

    def neg_log_post(theta):
        return -target(theta, x, y, mask, n)

    def evaluate(samples: np.ndarray) -> dict:
        samples = jnp.asarray(samples, jnp.float32)
        outputs = particle_outputs(post, samples, data.x_test)
        log_probs = metrics.predictive_log_probs(outputs, jnp.zeros(len(samples)))
        m = metrics.classification_metrics(log_probs, jnp.asarray(data.y_test))
        p = np.exp(np.asarray(log_probs, np.float64))
        tv = float(np.mean(0.5 * np.abs(p - reference).sum(axis=1)))
        return {"tv": round(tv, 4), "nll": round(float(m["nll"]), 4), "accuracy": m["accuracy"]}

    prior_prec = 1.0 / float(np.max(np.asarray(post.prior_std))) ** 2
    for seed in args.seeds:
        theta0 = jax.random.normal(jax.random.key(seed), post.prior_std.shape) * post.prior_std
        theta, grad_norm = fit_map(neg_log_post, theta0, args.map_steps)
        hess = np.asarray(jax.jit(jax.hessian(neg_log_post))(theta), np.float64)
        eig, vec = np.linalg.eigh(0.5 * (hess + hess.T))
        eig = np.maximum(eig, prior_prec)  # a floor for directions the fit left flat
        cov_diag = (vec**2) @ (1.0 / eig)
        mode = np.asarray(theta, np.float64)
        z = np.asarray(jax.random.normal(jax.random.key(100 + seed), (args.samples, mode.size)))
        fits = {
            "map": evaluate(mode[None]),
            "laplace_full": evaluate(mode + (z / np.sqrt(eig)) @ vec.T),
            "laplace_marginals": evaluate(mode + z * np.sqrt(cov_diag)),
            "inverse_diag_hessian": evaluate(mode + z / np.sqrt(np.maximum(np.diag(hess), eig[0]))),
        }
        for r in args.ranks:  # eigh sorts ascending: the first r are the widest directions
            factor = vec[:, :r] / np.sqrt(eig[:r])
            rest = np.maximum(cov_diag - (factor**2).sum(axis=1), 0.0)
            zr = np.asarray(jax.random.normal(jax.random.key(200 + seed), (args.samples, r)))
            fits[f"laplace_rank{r}"] = evaluate(mode + z * np.sqrt(rest) + zr @ factor.T)
        line = {"seed": seed, "map_grad_norm": grad_norm, "hessian_eig": [eig[0], eig[-1]]}
        print(json.dumps({**line, **fits}), flush=True)


if __name__ == "__main__":
    main()
