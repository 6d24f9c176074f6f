"""Config -> objects: the one translator from a composed config to the library's plain settings.

Everything here reads a DictConfig and returns data arrays, a Posterior or a NamedTuple of static
settings for inference/; nothing runs inference. Methods call these from their own modules.
"""

from __future__ import annotations

from omegaconf import DictConfig

from bnn_bench.errors import ConfigError


def load_data(cfg: DictConfig):
    """The dataset in the layout the model wants, checked against the likelihood."""
    from bnn_bench.data import load_dataset
    from bnn_bench.models import model_layout

    d = cfg.dataset
    options = {"task": d.task} if d.task else {}
    if d.num_classes is not None:
        options["num_classes"] = d.num_classes
    if d.name == "synthetic_regression":
        options.update(dim=d.dim, noise_std=d.noise_std)
    data = load_dataset(
        d.name,
        layout=model_layout(cfg.model.name),
        root=d.root,
        path=d.path,
        n_train=d.n_train,
        n_test=d.n_test,
        test_fraction=d.test_fraction,
        val_fraction=d.val_fraction,
        seed=cfg.seed,
        standardize_inputs=d.standardize.inputs,
        standardize_targets=d.standardize.targets,
        **options,
    )
    wanted = {"categorical": "classification", "gaussian": "regression"}[cfg.likelihood.name]
    if data.task != wanted:
        other = "gaussian" if wanted == "classification" else "categorical"
        raise ConfigError(
            f"likelihood={cfg.likelihood.name} needs a {wanted} dataset but dataset={d.name} is "
            f"{data.task}; use likelihood={other}"
        )
    return data


def posterior(cfg: DictConfig, data):
    """The model's Posterior (prior, likelihood, network) on the data's input shape."""
    from bnn_bench.models import build_model
    from bnn_bench.posterior import make_posterior

    num_outputs = data.num_classes if data.task == "classification" else 1
    options = {"hidden": list(cfg.model.hidden)} if cfg.model.name == "mlp" else {}
    model = build_model(cfg.model.name, num_outputs, **options)
    try:
        return make_posterior(
            model,
            data.x_train[:1],
            likelihood=cfg.likelihood.name,
            noise_std=cfg.likelihood.noise_std,
            prior_std=cfg.prior.std,
            prior_scale=cfg.prior.scale,
            compute_dtype=cfg.hardware.dtype,
        )
    except ValueError as exc:  # the model does not fit the inputs (make_posterior says why)
        raise ConfigError(
            f"model={cfg.model.name} cannot take dataset={cfg.dataset.name}'s inputs of shape "
            f"{data.input_shape}: {exc}"
        ) from exc


def particle_map(cfg: DictConfig) -> str:
    """hardware.particle_map, with auto resolved: unroll convolutional models on CPU, else vmap."""
    from bnn_bench.models import model_layout

    choice = cfg.hardware.particle_map
    if choice != "auto":
        return choice
    conv_on_cpu = model_layout(cfg.model.name) == "image" and cfg.hardware.platform == "cpu"
    return "unroll" if conv_on_cpu else "vmap"


def cpu_scheduler(cfg: DictConfig) -> str:
    """hardware.cpu_scheduler, with auto resolved: memory where the particles are unrolled
    (particle_map resolves to unroll: XLA's concurrency scheduler keeps every unrolled particle's
    activations alive at once), else concurrency, XLA's default (docs/performance.md)."""
    choice = cfg.hardware.cpu_scheduler
    if choice != "auto":
        return choice
    return "memory" if particle_map(cfg) == "unroll" else "concurrency"


def evaluator(cfg: DictConfig, data, posterior, reference=None):
    """test_metrics(particles, log_weights, reliability=False): the test-set metrics of a
    weighted particle set, streamed as hardware.* says (every method uses it), with agreement
    and total_variation (or w2) against `reference` when there is one.

    The final evaluation (reliability=True), and every evaluation with
    evaluation.at_evaluations, also adds what `evaluation.*` asks for (`ood`, `shift`,
    `selective`; evaluate.uncertainty_results), reusing the test pass's per-particle log-probs.
    """
    from bnn_bench.evaluate import ScoreStream, evaluate, uncertainty_results

    plan = uncertainty_plan(cfg, data)
    mapping = {
        "eval_chunk": cfg.hardware.eval_chunk,
        "particle_chunk": cfg.hardware.particle_chunk,
        "particle_map": particle_map(cfg),
    }

    def test_metrics(particles, log_weights, reliability: bool = False) -> dict:
        extra = plan is not None and (reliability or cfg.evaluation.at_evaluations)
        scores = ScoreStream(log_weights) if extra else None
        result = evaluate(
            posterior,
            particles,
            log_weights,
            data.x_test,
            data.y_test,
            observe=scores,
            reliability=reliability,
            **mapping,
            target_shift=data.y_mean,
            target_scale=data.y_std,
            reference=reference,
        )
        if extra:
            result.update(
                uncertainty_results(
                    posterior,
                    particles,
                    log_weights,
                    data.x_test,
                    data.y_test,
                    plan,
                    scores.arrays(),
                    **mapping,
                )
            )
        return result

    return test_metrics


def evaluates_uncertainty(cfg: DictConfig) -> bool:
    """Whether evaluation.* asks for anything beyond the test set (OOD, shift, selective)."""
    e = cfg.evaluation
    return bool(e.ood or e.shift.rotations or e.shift.corruptions or e.selective)


def uncertainty_plan(cfg: DictConfig, data):
    """evaluation.* as an evaluate.UncertaintyPlan of streamed sets, or None when none is asked."""
    from bnn_bench.data import ood, shift
    from bnn_bench.evaluate import UncertaintyPlan

    e = cfg.evaluation
    if not evaluates_uncertainty(cfg):
        return None
    stats = ood.input_statistics(
        data, path=cfg.dataset.path, test_fraction=cfg.dataset.test_fraction
    )
    sets = tuple(ood.ood_set(str(s), data, stats, dataset_path=cfg.dataset.path) for s in e.ood)
    levels = []
    if e.shift.rotations or e.shift.corruptions:
        image = ood.image_shape(data.name, data.input_shape)
        if image is None:
            raise ConfigError(
                f"evaluation.shift needs image inputs, but dataset={data.name} has tabular "
                f"inputs of shape {data.input_shape}; leave evaluation.shift empty"
            )
        fill = ood.background(stats)
        levels += [
            ("rotation", float(a), shift.shift_transform("rotation", float(a), image, stats, fill))
            for a in e.shift.rotations
        ]
        levels += [
            (c, int(s), shift.shift_transform(c, int(s), image, stats, fill))
            for c in e.shift.corruptions
            for s in e.shift.severities
        ]
    coverages = tuple(float(c) for c in e.coverages) if e.selective else ()
    return UncertaintyPlan(data.num_classes, sets, tuple(levels), coverages)


def proposal(cfg: DictConfig):
    from bnn_bench.inference.smc.proposals import Proposal

    p = cfg.proposal
    return Proposal(
        num_steps=p.num_steps,
        step_size=p.step_size,
        name=p.name,
        adapt_step_size=p.adapt_step_size,
        target_accept=p.target_accept,
        adapt_rate=p.adapt_rate,
        mass=p.mass,
        max_steps=p.max_steps,
        learning_rate=p.learning_rate,
    )


def smc_config(cfg: DictConfig):
    """The SMC sampler's static settings."""
    from bnn_bench.inference.smc import sampler

    smc = cfg.smc
    return sampler.SMCConfig(
        proposal=proposal(cfg),
        resample_threshold=smc.resample_threshold,
        resampler=smc.resampler,
        weights=smc.weights,
        particle_chunk=cfg.hardware.particle_chunk,
        particle_map=particle_map(cfg),
        data_chunk=cfg.hardware.data_chunk,
    )


def schedule_plan(cfg: DictConfig, num_data: int):
    """The schedule's static plan."""
    from bnn_bench.inference.smc import schedules

    s = cfg.schedule
    return schedules.SchedulePlan(
        name=s.name,
        num_data=num_data,
        num_iterations=cfg.smc.num_iterations,
        batch_size=s.batch_size,
        noise_tol=s.noise_tol,
        entropy_tol=s.entropy_tol,
        window=s.window,
        growth=s.growth,
        refine_iterations=s.refine_iterations,
        signal=s.signal,
        loglik_tol=s.loglik_tol,
        refine_at=s.refine_at,
        slope=s.slope,
    )


def vi_config(cfg: DictConfig, num_data: int):
    """The VI algorithms' static settings."""
    from bnn_bench.inference.vi import family

    vi = cfg.vi
    return family.VIConfig(
        num_samples=vi.num_samples,
        batch_size=min(vi.batch_size, num_data),
        batch_per_sample=bool(vi.batch_per_sample),
        # the control variate is score_prox's option (the paper's future work)
        snapshot_every=vi.snapshot_every if vi.algorithm == "score_prox" else 0,
        prox_weight=vi.prox_weight,
        prox_growth=vi.prox_growth,
        prox_schedule=vi.prox_schedule,
        max_mean_step=vi.max_mean_step,
        max_var_ratio=vi.max_var_ratio,
        inner_steps=vi.inner_steps,
        inner_tol=vi.inner_tol,
        learning_rate=vi.learning_rate,
        bam_lambda0=vi.bam_lambda0,
        family=vi.family,
        rank=vi.rank if vi.family == "lowrank" else 0,
        sample_map="unroll" if particle_map(cfg) == "unroll" else "scan",
    )


def hmc_config(cfg: DictConfig):
    """The reference sampler's static settings."""
    from bnn_bench.inference.hmc import HMCConfig

    return HMCConfig(**{k: cfg.hmc[k] for k in HMCConfig._fields})


def ensemble_config(cfg: DictConfig):
    """The deep ensemble's static settings."""
    from bnn_bench.inference.ensemble import EnsembleConfig

    return EnsembleConfig(**{k: cfg.ensemble[k] for k in EnsembleConfig._fields})


def sgmcmc_config(cfg: DictConfig):
    """SGLD/SGHMC's static settings."""
    from bnn_bench.inference.sgmcmc import SGMCMCConfig

    return SGMCMCConfig(**{k: cfg.sgmcmc[k] for k in SGMCMCConfig._fields})


def reference(cfg: DictConfig):
    """The reference=PATH (or shipped name) a run is compared with, read; None without one."""
    from bnn_bench import reference as ref

    if not cfg.get("reference"):
        return None
    try:
        return ref.read(cfg.reference)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def check_reference(cfg: DictConfig, data, reference) -> None:
    """Refuse a reference made on another target (one line naming the differing field); without
    `data` only the fields the config fixes are compared (preflight, before any work)."""
    from bnn_bench import reference as ref

    if reference is None:
        return
    if data is None:
        run, fields = ref.config_identity(cfg), ref.CONFIG_FIELDS
    else:
        run, fields = ref.target_identity(cfg, data), ref.IDENTITY_FIELDS
    differs = ref.mismatch(reference.identity, run, fields)
    if differs:
        raise ConfigError(f"reference={cfg.reference} does not match this run's target: {differs}")
