"""method=hmc: a reference posterior by full-batch NUTS (or HMC) over several chains.

Chains start from MAP fits or prior draws, are tuned by blackjax's window adaptation (one jitted
call before the loop: it cannot be interrupted; a checkpoint is written right after it), then
take hmc.num_samples transitions on the shared host loop (inference/driver.py), one dispatch per
transition of all chains. Every hmc.thin-th state is observed on the test set inside the jitted
step (the test log-probability of the true label, or f(x) for regression, into a fixed buffer;
the predictive probabilities are summed), so that nothing is carried to the host per step and a
checkpoint is the state itself. The run writes reference.npz (bnn_bench/reference.py): the test
predictive, the test set's identity and the diagnostics.
"""

from __future__ import annotations

import sys
import time
from typing import Any, NamedTuple

from bnn_bench import build
from bnn_bench.lifecycle import raise_if_stopped
from bnn_bench.methods.base import Job, Method


class HMCRun(NamedTuple):
    """The loop's state: the chains and, on device, what has been kept of them."""

    chains: Any  # inference.hmc.Chains
    step: Any  # () transitions done
    draws: Any  # (num_samples // thin, C, n_test): log p(y|x) of the true label, or f(x)
    prob_sum: Any  # (n_test, K): sum of kept predictive probabilities ((0,) for regression)
    positions: Any  # (num_samples // thin, C, D) with save_posterior, else (0, C, D)


def run(job: Job) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bnn_bench import metrics
    from bnn_bench import reference as ref
    from bnn_bench.inference import driver, hmc

    cfg, post, data = job.cfg, job.posterior, job.data
    config = build.hmc_config(cfg)
    n, n_test = data.n_train, len(data.y_test)
    classification = post.likelihood == "categorical"
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    log_density = hmc.full_data_log_density(post.log_prior, post.log_likelihood, x, y)
    num_kept = config.num_samples // config.thin
    chains_n, dim = config.num_chains, post.dim
    num_classes = data.num_classes if classification else 0
    # the draws themselves are kept for posterior.npz, and for evaluation.* (OOD sets and shifted
    # test sets are scored by every draw at the end, as for the other methods)
    keep_positions = cfg.save_posterior or build.evaluates_uncertainty(cfg)
    key_init, key_warm, key_run = jax.random.split(jax.random.key(cfg.seed), 3)

    def observe(theta):
        out = post.apply(theta, x_test)
        if not classification:
            return out[:, 0], jnp.zeros((0,))
        logp = jax.nn.log_softmax(out)
        true = jnp.take_along_axis(logp, y_test[:, None].astype(jnp.int32), axis=1)[:, 0]
        return true, jnp.exp(logp)

    def fresh(chains) -> HMCRun:
        return HMCRun(
            chains,
            jnp.zeros((), jnp.int32),
            jnp.zeros((num_kept, chains_n, n_test)),
            jnp.zeros((n_test, num_classes) if classification else (0,)),
            jnp.zeros((num_kept if keep_positions else 0, chains_n, dim)),
        )

    counters: dict[str, Any] = {"example_grads": 0, "elapsed": 0.0, "divergences": 0}
    t0 = time.perf_counter()
    if job.checkpoints.resumed is not None:
        like = hmc.Chains(
            jax.vmap(lambda p: hmc.initial_state(p, log_density, config))(
                jnp.zeros((chains_n, dim))
            ),
            jnp.zeros(chains_n),
            jnp.zeros((chains_n, dim)),
        )
        state, meta = job.checkpoints.read(fresh(like))
        counters.update(meta["counters"])
        start = meta["iteration"]
    else:
        if cfg.progress:  # the MAP fits and blackjax's window adaptation are one jitted call each
            start_of = (
                f"{config.init_steps} Adam steps to a MAP start"
                if config.init == "map"
                else "a prior draw"
            )
            print(
                f"[bnn-bench] hmc: {chains_n} chains, each from {start_of}, then "
                f"{config.num_warmup} warmup transitions (blackjax window adaptation, one jitted "
                "call: no progress until it ends; a SIGTERM takes effect then)",
                file=sys.stderr,
            )
        positions = hmc.initial_positions(key_init, post.prior_std, log_density, config)
        chains, warm = hmc.warmup(key_warm, log_density, positions, config)
        warm = jax.device_get(warm)
        counters["warmup"] = hmc.summarise(warm, config.num_warmup)
        map_grads = config.init_steps * chains_n if config.init == "map" else 0
        counters["example_grads"] = n * int(np.sum(warm.num_integration_steps) + map_grads)
        counters["elapsed"] = time.perf_counter() - t0
        state, start = fresh(chains), 0
        if cfg.progress:
            sizes = ", ".join(f"{s:.3g}" for s in np.asarray(chains.step_size))
            print(
                f"[bnn-bench] hmc warmup done in {counters['elapsed']:.0f}s: step sizes {sizes}; "
                f"{counters['warmup']['divergences']} divergent warmup transitions",
                file=sys.stderr,
            )
        if job.checkpoints.every > 0 or job.should_stop():
            job.checkpoints.write(state, 0, counters=counters, wandb_id=job.reporter.run_id)
        if job.should_stop():
            raise_if_stopped("interrupted", 0, job.out_dir, "")
    step_size = float(np.mean(np.asarray(state.chains.step_size)))

    @jax.jit
    def dispatch(s: HMCRun):
        key = jax.random.fold_in(key_run, s.step)
        chains, info = hmc.transition(key, s.chains, log_density=log_density, config=config)
        s = s._replace(chains=chains, step=s.step + 1)

        def keep(s):
            seen, probs = jax.vmap(observe)(chains.state.position)  # (C, n), (C, n, K)
            i = s.step // config.thin - 1
            s = s._replace(draws=s.draws.at[i].set(seen))
            if classification:
                s = s._replace(prob_sum=s.prob_sum + jnp.sum(probs, axis=0))
            if keep_positions:
                s = s._replace(positions=s.positions.at[i].set(chains.state.position))
            return s

        return jax.lax.cond(s.step % config.thin == 0, keep, lambda s: s, s), info

    done = {"iter": start}

    def to_records(infos, elapsed):
        records = []
        for info in infos:
            done["iter"] += 1
            counters["divergences"] += int(np.sum(info.num_divergent))
            counters["example_grads"] += n * int(np.sum(info.num_integration_steps))
            records.append(
                {
                    "iter": done["iter"],
                    "batch_size": n,
                    "divergent": int(np.sum(info.num_divergent)),
                    "divergences": counters["divergences"],
                    "tree_depth": float(np.mean(info.tree_depth)),
                    "integration_steps": float(np.mean(info.num_integration_steps)),
                    "accept_mean": float(np.mean(info.acceptance_rate)),
                    "step_size": step_size,
                    "time_s": elapsed,
                    "example_grads": counters["example_grads"],
                }
            )
        return records, False

    reference = build.reference(cfg)

    def fidelity(predictive):
        return metrics.fidelity(predictive, reference) if reference is not None else {}

    def predictive(s: HMCRun, kept: int):
        """Test metrics (and fidelity) of the first `kept` draws of every chain."""
        if classification:
            probs = np.asarray(s.prob_sum, np.float64) / (kept * chains_n)
            out = metrics.classification_metrics(np.log(np.maximum(probs, 1e-38)), data.y_test)
            out.update(fidelity(probs))
            return out, probs.astype(np.float32)
        f = np.asarray(s.draws[:kept]).reshape(-1, n_test) * data.y_std + data.y_mean
        out = metrics.regression_metrics(
            f, np.zeros(len(f)), data.y_test * data.y_std + data.y_mean, post.noise_std * data.y_std
        )
        out.update(fidelity(f.T))
        return out, f.T.astype(np.float32)

    def callback(record, s):
        k = record["iter"]
        kept = k // config.thin
        if s is not None and job.evaluate_every(k) and kept >= 1:
            out, _ = predictive(s, kept)
            record.update({f"test_{name}": v for name, v in out.items()})
            if kept >= 4:  # split-chain ESS needs two draws per half-chain
                series = np.asarray(s.draws[:kept]).transpose(1, 0, 2)
                record["rhat_max"] = hmc.diagnostics(series)["rhat_max"]
        job.reporter.record(record)
        if s is not None and (job.checkpoints.due(k) or job.should_stop()):
            saved = {**counters, "elapsed": record["time_s"]}
            job.checkpoints.write(s, k, counters=saved, wandb_id=job.reporter.run_id)

    state, status, iterations = driver.run(
        dispatch,
        state,
        num_iterations=config.num_samples,
        to_records=to_records,
        diverged=lambda record: False,
        start=start,
        elapsed=counters["elapsed"],
        sync_every=cfg.log_every,
        state_every=job.state_every,
        callback=callback,
        should_stop=job.should_stop,
    )
    raise_if_stopped(status, iterations, job.out_dir, "")
    results, predictive_out = predictive(state, num_kept)
    if build.evaluates_uncertainty(cfg):  # ood / shift / selective of the kept draws
        draws = jnp.asarray(state.positions).reshape(-1, dim)
        scored = job.test_metrics(draws, jnp.zeros(len(draws)), True)
        results.update({k: scored[k] for k in ("ood", "shift", "selective") if k in scored})
    if classification:
        results["reliability"] = metrics.reliability_summary(
            np.log(np.maximum(predictive_out, 1e-38)), data.y_test
        )
    diagnostics = hmc.diagnostics(np.asarray(state.draws).transpose(1, 0, 2))
    step_sizes = [float(v) for v in np.asarray(state.chains.step_size)]
    summary = {
        "algorithm": config.algorithm,
        "num_chains": chains_n,
        "num_warmup": config.num_warmup,
        "num_samples": config.num_samples,
        "thin": config.thin,
        "init": config.init,
        "iterations": iterations,
        "n_draws": num_kept * chains_n,
        "example_grads": counters["example_grads"],
        "divergences": counters["divergences"],
        "warmup_divergences": counters.get("warmup", {}).get("divergences"),
        "step_size": float(np.mean(step_sizes)),
        "step_sizes": step_sizes,
        **{k: v for k, v in diagnostics.items()},
    }
    history = _history(job)
    if history:
        summary["tree_depth_mean"] = float(np.mean([r["tree_depth"] for r in history]))
        summary["accept_mean"] = float(np.mean([r["accept_mean"] for r in history]))
    extra = {}
    if cfg.save_posterior:
        particles = np.asarray(state.positions).reshape(-1, dim)
        extra["particles"] = particles
        job.write_posterior(particles, np.zeros(len(particles), np.float32))
    ident = ref.target_identity(cfg, data)
    record = {**summary, "seed": cfg.seed, "accuracy": results.get("accuracy")}
    record.update({k: results[k] for k in ("nll", "ece", "rmse") if k in results})
    if classification:
        ref.write(
            job.out_dir / "reference.npz", ident, probs=predictive_out, diagnostics=record, **extra
        )
    else:
        ref.write(
            job.out_dir / "reference.npz",
            ident,
            samples=predictive_out,
            diagnostics=record,
            **extra,
        )
    results.update(summary)
    return results


def _history(job: Job) -> list[dict[str, Any]]:
    from bnn_bench.tracking import read_metrics

    return read_metrics(job.out_dir / "metrics.jsonl")


METHOD = Method(
    name="hmc",
    run=run,
    num_iterations=lambda cfg: cfg.hmc.num_samples,
    labels=lambda cfg: (cfg.hmc.algorithm,),
    progress_key="tree_depth",
    row=lambda results: (str(results.get("algorithm", "?")), ""),
    variant_order=("nuts", "hmc"),
)
