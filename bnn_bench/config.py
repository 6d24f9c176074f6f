"""The structured-config schema (registered in Hydra's ConfigStore): the ONLY defaults of every
key, and the value checks that types can't express.

Where a library NamedTuple has a setting of the same name (SMCConfig, Proposal, SchedulePlan,
VIConfig), the schema takes its default from that field (`_default`), so the library and the CLI
can never disagree; the yaml options under conf/ set only what differs between options (e.g.
langevin's S = 1). Types are enforced by OmegaConf when configs are composed; `validate` then
rejects impossible values with a ConfigError naming the key, the value and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from bnn_bench.backend import CPU_SCHEDULERS
from bnn_bench.errors import ConfigError
from bnn_bench.inference.ensemble import EnsembleConfig
from bnn_bench.inference.hmc import HMCConfig
from bnn_bench.inference.sgmcmc import SGMCMCConfig
from bnn_bench.inference.smc.moves import MoveSettings
from bnn_bench.inference.smc.proposals import Proposal
from bnn_bench.inference.smc.sampler import SMCConfig
from bnn_bench.inference.smc.schedules import SchedulePlan
from bnn_bench.inference.vi.family import VIConfig


def _default(settings, name: str):
    """The default of field `name` of the library NamedTuple `settings`."""
    return settings._field_defaults[name]


@dataclass
class MethodConfig:
    name: str = "smc"


@dataclass
class SMCSettings:
    num_particles: int = 64  # J
    num_iterations: int | None = None  # K (null: the path's, PATH_DEFAULTS)
    resample_threshold: float = _default(SMCConfig, "resample_threshold")
    resampler: str = _default(SMCConfig, "resampler")
    weights: str = _default(SMCConfig, "weights")
    path: str = "nested"  # nested | tempered (exact SMC) | minibatch (the paper's)
    num_mcmc_steps: int = 5  # Metropolis-adjusted moves per iteration (nested, tempered)
    final_sweeps: int | None = None  # nested, tempered: rounds of moves at the end, all kept
    budget: int | None = None  # example-gradients of the whole run (null: none; see BUDGET)


@dataclass
class VISettings:
    algorithm: str = "score_prox"
    family: str = _default(VIConfig, "family")
    rank: int = 1  # r, columns of the low-rank factor (family=lowrank)
    num_iterations: int = 1000  # T
    batch_size: int = _default(VIConfig, "batch_size")
    num_samples: int = _default(VIConfig, "num_samples")
    batch_per_sample: bool = _default(VIConfig, "batch_per_sample")
    snapshot_every: int = _default(VIConfig, "snapshot_every")
    prox_weight: float = _default(VIConfig, "prox_weight")
    prox_growth: float = _default(VIConfig, "prox_growth")
    prox_schedule: str = _default(VIConfig, "prox_schedule")
    max_mean_step: float = _default(VIConfig, "max_mean_step")
    max_var_ratio: float = _default(VIConfig, "max_var_ratio")
    inner_steps: int = _default(VIConfig, "inner_steps")
    inner_tol: float = _default(VIConfig, "inner_tol")
    learning_rate: float = _default(VIConfig, "learning_rate")
    bam_lambda0: float = _default(VIConfig, "bam_lambda0")
    num_predictive_samples: int = 32  # draws from q for the test predictive
    init_std: float = 0.01  # q_0's std as a fraction of the prior std (mean: a prior draw)


@dataclass
class HMCSettings:
    algorithm: str = _default(HMCConfig, "algorithm")
    num_chains: int = _default(HMCConfig, "num_chains")
    num_warmup: int = _default(HMCConfig, "num_warmup")
    num_samples: int = _default(HMCConfig, "num_samples")
    thin: int = _default(HMCConfig, "thin")
    target_accept: float = _default(HMCConfig, "target_accept")
    max_tree_depth: int = _default(HMCConfig, "max_tree_depth")
    num_integration_steps: int = _default(HMCConfig, "num_integration_steps")
    init: str = _default(HMCConfig, "init")
    init_steps: int = _default(HMCConfig, "init_steps")
    init_learning_rate: float = _default(HMCConfig, "init_learning_rate")


@dataclass
class EnsembleSettings:
    num_members: int = _default(EnsembleConfig, "num_members")
    num_epochs: int = _default(EnsembleConfig, "num_epochs")
    batch_size: int = _default(EnsembleConfig, "batch_size")
    learning_rate: float = _default(EnsembleConfig, "learning_rate")
    lr_schedule: str = _default(EnsembleConfig, "lr_schedule")


@dataclass
class SGMCMCSettings:
    algorithm: str = _default(SGMCMCConfig, "algorithm")
    num_iterations: int = _default(SGMCMCConfig, "num_iterations")
    batch_size: int = _default(SGMCMCConfig, "batch_size")
    step_size: float | None = _default(SGMCMCConfig, "step_size")
    step_schedule: str = _default(SGMCMCConfig, "step_schedule")
    num_cycles: int = _default(SGMCMCConfig, "num_cycles")
    burn_in: int = _default(SGMCMCConfig, "burn_in")
    thin: int = _default(SGMCMCConfig, "thin")
    num_integration_steps: int = _default(SGMCMCConfig, "num_integration_steps")
    alpha: float = _default(SGMCMCConfig, "alpha")


@dataclass
class ScheduleConfig:
    name: str = "ctr"
    batch_size: int | None = None  # C (null: the path's, PATH_DEFAULTS)
    refine_at: float = _default(SchedulePlan, "refine_at")
    slope: float | None = _default(SchedulePlan, "slope")
    # adaptive schedules (automated, sda, ctr_adaptive; docs/algorithms.md)
    noise_tol: float = _default(SchedulePlan, "noise_tol")
    entropy_tol: float = _default(SchedulePlan, "entropy_tol")
    window: int = _default(SchedulePlan, "window")
    growth: float = _default(SchedulePlan, "growth")
    refine_iterations: int | None = _default(SchedulePlan, "refine_iterations")
    signal: str = _default(SchedulePlan, "signal")
    loglik_tol: float = _default(SchedulePlan, "loglik_tol")


@dataclass
class ProposalConfig:
    name: str = _default(Proposal, "name")
    num_steps: int | None = None  # S (null: the path's, PATH_DEFAULTS)
    step_size: float | None = None  # h, the initial h when adapted (null: the path's)
    adapt_step_size: bool | None = None  # (null: the path's)
    target_accept: float = _default(Proposal, "target_accept")
    adapt_rate: float = _default(Proposal, "adapt_rate")
    mass: str = _default(Proposal, "mass")
    max_steps: int = _default(Proposal, "max_steps")
    learning_rate: float = _default(Proposal, "learning_rate")
    correction: str | None = None  # mh | none (null: the path's: mh on nested/tempered)
    # exact paths: a round of moves accepting less than min_accept on the mean is repeated at
    # half the step size, up to max_retries times (null: the path's; minibatch: 0)
    min_accept: float = _default(MoveSettings, "min_accept")
    max_retries: int | None = None


@dataclass
class StandardizeConfig:
    inputs: str = "auto"  # auto | none | global | per_feature (auto: the dataset's default)
    targets: str = "auto"  # auto | none | standard (regression; auto: standard for diabetes)


@dataclass
class DatasetConfig:
    name: str = "digits"
    root: str | None = None
    path: str | None = None
    n_train: int | None = None
    n_test: int | None = None
    test_fraction: float = 0.2
    val_fraction: float = 0.0
    task: str | None = None
    dim: int = 5
    noise_std: float = 0.5
    num_classes: int | None = None
    standardize: StandardizeConfig = field(default_factory=StandardizeConfig)


@dataclass
class ModelConfig:
    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [32])


@dataclass
class LikelihoodConfig:
    name: str = "categorical"
    noise_std: float = 1.0


@dataclass
class PriorConfig:
    std: float = 3.0
    scale: str = "fan_in"


@dataclass
class HardwareConfig:
    name: str = "cpu"
    platform: str = "cpu"
    dtype: str = "float32"
    particle_chunk: int | None = None
    particle_map: str = "auto"
    # XLA's CPU scheduler for this process: memory | concurrency; auto: memory where the
    # particles are unrolled (particle_map resolves to unroll), else concurrency (XLA's default)
    cpu_scheduler: str = "auto"
    data_chunk: int | None = None
    eval_chunk: int = 2000
    devices: int = 1
    cores_per_job: int | None = None
    compilation_cache: str | None = "outputs/.jax_cache"
    distributed: bool = False
    # jax.distributed.initialize's arguments; null: detected from the cluster (SLURM, ...)
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


@dataclass
class LoggerConfig:
    name: str = "wandb"
    mode: str = "online"
    project: str = "bnn-bench"
    entity: str | None = None
    group: str | None = None


@dataclass
class ShiftConfig:
    rotations: list[float] = field(default_factory=list)  # angles in degrees (0: the test set)
    corruptions: list[str] = field(default_factory=list)  # gaussian_noise, blur, contrast
    severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])


@dataclass
class EvaluationConfig:
    ood: list[str] = field(default_factory=list)  # built-in names or .npz paths with x
    shift: ShiftConfig = field(default_factory=ShiftConfig)
    selective: bool = False  # accuracy at each coverage and the AURC
    coverages: list[float] = field(default_factory=lambda: [0.5, 0.8, 0.9])
    at_evaluations: bool = False  # also at each eval_every evaluation, into metrics.jsonl


@dataclass
class Config:
    method: MethodConfig = field(default_factory=MethodConfig)
    smc: SMCSettings = field(default_factory=SMCSettings)
    vi: VISettings = field(default_factory=VISettings)
    hmc: HMCSettings = field(default_factory=HMCSettings)
    ensemble: EnsembleSettings = field(default_factory=EnsembleSettings)
    sgmcmc: SGMCMCSettings = field(default_factory=SGMCMCSettings)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    proposal: ProposalConfig = field(default_factory=ProposalConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    likelihood: LikelihoodConfig = field(default_factory=LikelihoodConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    experiment: str | None = None
    reference: str | None = None  # a reference.npz (or a shipped name): fidelity metrics
    seed: int = 0
    save_posterior: bool = False
    eval_every: int = 0
    log_every: int = 10
    progress: bool = True
    checkpoint_every: int = 100
    resume: bool = False
    overwrite: bool = False


# The keys whose default depends on smc.path: null in the schema, filled in from this table by
# `resolve_path_defaults` (the first step of `validate`), so every job's resolved config,
# results.json and W&B show the value used. minibatch keeps the SMC paper's values (K, S, h, C)
# for reproducing its tables; the exact paths' were chosen by measurement (docs/algorithms.md,
# "Exact SMC", and docs/results/exact-smc.md). Under nested, K is the length of a fixed schedule
# (bridge steps come on top); automated and tempered runs choose their targets and end at the
# posterior.
_EXACT_DEFAULTS = {
    "smc.num_iterations": 20,
    "smc.final_sweeps": 10,
    "schedule.batch_size": 100,
    "proposal.num_steps": 10,
    "proposal.step_size": 0.1,
    "proposal.adapt_step_size": True,
    "proposal.correction": "mh",
    "proposal.max_retries": 5,
}
PATH_DEFAULTS = {
    "minibatch": {
        "smc.num_iterations": 1000,
        "smc.final_sweeps": 0,
        "schedule.batch_size": 500,
        "proposal.num_steps": 3,
        "proposal.step_size": 0.002,
        "proposal.adapt_step_size": False,
        "proposal.correction": "none",
        "proposal.max_retries": 0,
    },
    "nested": _EXACT_DEFAULTS,
    "tempered": _EXACT_DEFAULTS,
}

# With `smc.budget` (example-gradients of the whole run) set, what the budget decides: on the
# exact paths the number of final sweeps (the path runs to its end, then sweeps are added until
# the budget is spent; smc.final_sweeps, 0 here, is then a minimum), on minibatch K (the
# smallest K whose fixed schedule spends the budget, chosen once the data are loaded; None: left
# null, and a K set anywhere is refused).
BUDGET_DEFAULTS = {
    "minibatch": {"smc.num_iterations": None},
    "nested": {"smc.final_sweeps": 0},
    "tempered": {"smc.final_sweeps": 0},
}


def resolve_path_defaults(cfg) -> None:
    """Fill every null key of PATH_DEFAULTS[smc.path] in place (an unknown path is left for
    `validate` to refuse). Values set anywhere (a yaml option, a preset, the command line) stay."""
    from omegaconf import OmegaConf, open_dict

    path = OmegaConf.select(cfg, "smc.path")
    defaults = dict(PATH_DEFAULTS.get(path, {}))
    if OmegaConf.select(cfg, "smc.budget") is not None:  # the budget decides (BUDGET_DEFAULTS)
        defaults.update(BUDGET_DEFAULTS.get(path, {}))
        defaults = {key: value for key, value in defaults.items() if value is not None}
    with open_dict(cfg):
        for key, value in defaults.items():
            if OmegaConf.select(cfg, key) is None:
                OmegaConf.update(cfg, key, value, merge=False)


def register_configs() -> None:
    """Make the schema available as `base_config` for conf/config.yaml's defaults list."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)


def _allowed(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value} is not allowed; choose one of: {', '.join(choices)}")


def _check(key: str, value, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value} is not allowed; it must be {allowed}")


def check_targets(node, prefix: str = "") -> None:
    """Refuse any `_target_` outside bnn_bench (the instantiate allow-list).

    bnn-bench builds its objects from registries, not from `_target_` strings; this check makes
    sure that a config or an override can never name code for Hydra to import and call.
    """
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_" and not str(value).startswith(ALLOWED_TARGET_PREFIX):
                raise ConfigError(
                    f"{prefix}_target_={value} is not allowed; only {ALLOWED_TARGET_PREFIX}* "
                    "targets may be instantiated"
                )
            check_targets(value, f"{prefix}{key}.")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_targets(value, f"{prefix}{i}.")


ALLOWED_TARGET_PREFIX = "bnn_bench."
MAX_INT = 2**31 - 1  # counts, sizes and widths are int32 in JAX
MAX_SEED = 2**32 - 1  # jax.random.key folds larger seeds back onto 0..2**32-1


def check_numbers(node, prefix: str = "") -> None:
    """Every number in the config, whatever its key: floats finite, integers within int32 and
    `seed` in 0..2**32-1, so that no value can overflow or turn into NaN deep inside a run."""
    if isinstance(node, dict):
        for key, value in node.items():
            check_numbers(value, f"{prefix}{key}.")
        return
    if isinstance(node, list):
        for i, value in enumerate(node):
            check_numbers(value, f"{prefix[:-1]}[{i}].")
        return
    key = prefix[:-1]
    if isinstance(node, bool):
        return
    if isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{key}={node} is not allowed; it must be a finite number")
    if isinstance(node, int):
        low, high = (0, MAX_SEED) if key == "seed" else (-MAX_INT, MAX_INT)
        if not low <= node <= high:
            raise ConfigError(
                f"{key}={node} is not allowed; it must be an integer in {low}..{high}"
            )


def check_known_keys(node, schema, prefix: str = "") -> None:
    """Refuse keys the schema does not have (an override like `+optimizer=adam` would add one)."""
    for key, value in node.items():
        if key not in schema:
            raise ConfigError(f"{prefix}{key}: unknown key (`bnn-bench --help` lists the keys)")
        if isinstance(value, dict) and isinstance(schema[key], dict):
            check_known_keys(value, schema[key], f"{prefix}{key}.")


def validate(cfg) -> None:
    """Fill the path-dependent defaults (resolve_path_defaults), then reject impossible values
    before any work starts (dataset-size checks happen at load)."""
    from omegaconf import OmegaConf

    resolve_path_defaults(cfg)
    from bnn_bench.methods.smc_exact import SMC_PATHS

    _allowed("smc.path", cfg.smc.path, SMC_PATHS)  # before any check of a path-dependent key

    from bnn_bench.inference.smc.proposals import MASSES, PROPOSALS
    from bnn_bench.inference.smc.sampler import RESAMPLERS, WEIGHTS
    from bnn_bench.inference.smc.schedules import SCHEDULES, SIGNALS

    tree = OmegaConf.to_container(cfg, resolve=False)
    check_targets(tree)
    check_known_keys(tree, OmegaConf.to_container(OmegaConf.structured(Config), resolve=False))
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - e.g. ${hydra:...} before Hydra runs: check what resolves
        resolved = tree
    check_numbers(resolved)
    from bnn_bench.methods import METHODS

    _allowed("method", cfg.method.name, tuple(METHODS))
    validate_vi(cfg.vi)
    validate_baselines(cfg)
    smc = cfg.smc
    _check("smc.num_particles", smc.num_particles, smc.num_particles >= 2, "an integer >= 2")
    _check("smc.final_sweeps", smc.final_sweeps, smc.final_sweeps >= 0, "an integer >= 0")
    if smc.budget is not None:
        _check("smc.budget", smc.budget, smc.budget >= 1, "an integer >= 1 (example-gradients)")
    if smc.num_iterations is not None or smc.budget is None or smc.path != "minibatch":
        k = smc.num_iterations
        _check("smc.num_iterations", k, k is not None and k >= 1, "an integer >= 1")
    t = smc.resample_threshold
    _check("smc.resample_threshold", t, 0 <= t <= 1, "in [0, 1]")
    _allowed("smc.resampler", smc.resampler, tuple(RESAMPLERS))
    _allowed("smc.weights", smc.weights, WEIGHTS)
    if cfg.method.name == "smc":
        from bnn_bench.methods.smc_exact import validate as validate_path

        validate_path(cfg)
    s = cfg.schedule
    _allowed("schedule", s.name, SCHEDULES)
    _check("schedule.batch_size", s.batch_size, s.batch_size >= 1, "an integer >= 1")
    _check("schedule.refine_at", s.refine_at, 0 < s.refine_at <= 1, "in (0, 1]")
    if s.slope is not None:
        _check("schedule.slope", s.slope, s.slope >= 0, ">= 0 (or null for the default)")
    _check("schedule.noise_tol", s.noise_tol, s.noise_tol >= 0, ">= 0")
    _check("schedule.entropy_tol", s.entropy_tol, s.entropy_tol >= 0, ">= 0")
    _check("schedule.window", s.window, s.window >= 1, "an integer >= 1")
    _check("schedule.growth", s.growth, s.growth > 1, "> 1")
    if s.refine_iterations is not None:
        ri = s.refine_iterations
        _check("schedule.refine_iterations", ri, ri >= 1, "an integer >= 1 (or null)")
    _allowed("schedule.signal", s.signal, SIGNALS)
    p = cfg.proposal
    _allowed("proposal", p.name, PROPOSALS)
    _check("proposal.num_steps", p.num_steps, p.num_steps >= 1, "an integer >= 1")
    if p.name == "langevin" and p.num_steps != 1:  # one rule, so every path reads num_steps
        raise ConfigError(
            f"proposal.num_steps={p.num_steps} is not allowed with proposal=langevin (one "
            "leapfrog step from a fresh momentum); use 1, or proposal=hmc"
        )
    _check("proposal.step_size", p.step_size, p.step_size > 0, "> 0")
    ta = p.target_accept
    _check("proposal.target_accept", ta, 0 < ta < 1, "in (0, 1)")
    _check("proposal.adapt_rate", p.adapt_rate, p.adapt_rate > 0, "> 0")
    _allowed("proposal.mass", p.mass, MASSES)
    ma = p.min_accept
    _check("proposal.min_accept", ma, 0 <= ma < 1, "in [0, 1)")
    _check("proposal.max_retries", p.max_retries, p.max_retries >= 0, "an integer >= 0")
    _check("proposal.max_steps", p.max_steps, p.max_steps >= 1, "an integer >= 1")
    lr = p.learning_rate
    _check("proposal.learning_rate", lr, lr > 0, "> 0")
    d = cfg.dataset
    from bnn_bench.data.datasets import INPUT_STANDARDIZATIONS, TARGET_STANDARDIZATIONS

    _allowed("dataset.standardize.inputs", d.standardize.inputs, INPUT_STANDARDIZATIONS)
    _allowed("dataset.standardize.targets", d.standardize.targets, TARGET_STANDARDIZATIONS)
    _check("dataset.test_fraction", d.test_fraction, 0 < d.test_fraction < 1, "in (0, 1)")
    vf = d.val_fraction
    _check("dataset.val_fraction", vf, 0 <= vf < 1, "in [0, 1) (0: evaluate on the test set)")
    if d.n_train is not None:
        _check("dataset.n_train", d.n_train, d.n_train >= 1, "an integer >= 1 (or null)")
    if d.n_test is not None:
        _check("dataset.n_test", d.n_test, d.n_test >= 1, "an integer >= 1 (or null)")
    if d.num_classes is not None:
        k = d.num_classes
        _check("dataset.num_classes", k, k >= 2, "an integer >= 2 (or null: K from the labels)")
    for i, width in enumerate(cfg.model.hidden):
        _check(f"model.hidden[{i}]", width, width >= 1, "an integer >= 1 (a layer's width)")
    if d.name == "npz" and not d.path:
        raise ConfigError("dataset.path is required for dataset=npz: an .npz file with x and y")
    _check("prior.std", cfg.prior.std, cfg.prior.std > 0, "> 0")
    _allowed("prior.scale", cfg.prior.scale, ("none", "fan_in"))
    _allowed("likelihood", cfg.likelihood.name, ("categorical", "gaussian"))
    nstd = cfg.likelihood.noise_std
    _check("likelihood.noise_std", nstd, nstd > 0, "> 0")
    h = cfg.hardware
    _allowed("hardware.platform", h.platform, ("cpu", "gpu", "cuda", "tpu"))
    _allowed("hardware.dtype", h.dtype, ("float32", "float64", "bf16"))
    for key in ("particle_chunk", "data_chunk", "cores_per_job"):
        count = getattr(h, key)
        if count is not None:
            _check(f"hardware.{key}", count, count >= 1, "an integer >= 1 (or null for all)")
    _allowed("hardware.particle_map", h.particle_map, ("auto", "vmap", "unroll"))
    _allowed("hardware.cpu_scheduler", h.cpu_scheduler, ("auto", *CPU_SCHEDULERS))
    _check("hardware.eval_chunk", h.eval_chunk, h.eval_chunk >= 1, "an integer >= 1")
    _check("hardware.devices", h.devices, h.devices >= 1, "an integer >= 1")
    for key in ("coordinator_address", "num_processes", "process_id"):
        if not h.distributed and h[key] is not None:
            raise ConfigError(
                f"hardware.{key}={h[key]} is not allowed without hardware.distributed=true"
            )
    if h.num_processes is not None:
        _check("hardware.num_processes", h.num_processes, h.num_processes >= 1, "an integer >= 1")
    if h.process_id is not None:
        top = h.num_processes - 1 if h.num_processes is not None else "num_processes - 1"
        ok = h.process_id >= 0 and (h.num_processes is None or h.process_id < h.num_processes)
        _check("hardware.process_id", h.process_id, ok, f"an integer in 0..{top}")
    _allowed("logger", cfg.logger.name, ("wandb", "none"))
    _allowed("logger.mode", cfg.logger.mode, ("online", "offline", "disabled"))
    _check("eval_every", cfg.eval_every, cfg.eval_every >= 0, ">= 0 (0: only at the end)")
    _check("log_every", cfg.log_every, cfg.log_every >= 1, "an integer >= 1")
    ce = cfg.checkpoint_every
    _check("checkpoint_every", ce, ce >= 0, ">= 0 (0: only on SIGTERM)")
    validate_evaluation(cfg)


def validate_evaluation(cfg) -> None:
    """Values of `evaluation:`, and the OOD npz files' shapes (from their headers only), so
    that a wrong file is refused before any work."""
    from bnn_bench.data import ood, shift

    e = cfg.evaluation
    asked = bool(e.ood or e.shift.rotations or e.shift.corruptions or e.selective)
    if asked and cfg.likelihood.name != "categorical":
        key = (
            "evaluation.ood"
            if e.ood
            else "evaluation.shift"
            if not e.selective
            else "evaluation.selective"
        )
        raise ConfigError(
            f"{key} needs a classifier (likelihood=categorical), not likelihood="
            f"{cfg.likelihood.name}; leave evaluation.ood and evaluation.shift empty and "
            "evaluation.selective false"
        )
    specs = [str(s) for s in e.ood]
    for spec in specs:
        if spec not in ood.BUILTIN_OOD and not spec.endswith(".npz"):
            raise ConfigError(
                f"evaluation.ood={spec} is not allowed; choose built-in sets "
                f"({', '.join(ood.BUILTIN_OOD)}) or .npz paths holding x"
            )
        if specs.count(spec) > 1:
            raise ConfigError(f"evaluation.ood={spec} is listed twice; list each set once")
    if "digits28" in specs and cfg.dataset.name == "digits":
        raise ConfigError(
            "evaluation.ood=digits28 is not allowed with dataset=digits: those digits are its own "
            "test inputs; choose from: sample_patches, uniform_noise, gaussian_noise"
        )
    for c in e.shift.corruptions:
        _allowed("evaluation.shift.corruptions", c, tuple(shift.CORRUPTIONS))
    for s in e.shift.severities:
        _check("evaluation.shift.severities", s, s in shift.SEVERITIES, "integers in 1..5")
    for c in e.coverages:
        _check("evaluation.coverages", c, 0 < c <= 1, "fractions in (0, 1]")
    if e.shift.corruptions and not e.shift.severities:
        raise ConfigError(
            "evaluation.shift.severities=[] is not allowed with corruptions; use 1..5"
        )
    files = [spec for spec in specs if spec not in ood.BUILTIN_OOD]
    if files:
        d = cfg.dataset
        expected = ood.expected_shape(d.name, d.path, d.dim)
        for spec in files:
            ood.check_ood_file(spec, expected)


def validate_baselines(cfg) -> None:
    """Values of the hmc:, ensemble: and sgmcmc: sections (checked whatever the method)."""
    from bnn_bench.inference import ensemble, hmc, sgmcmc

    h = cfg.hmc
    _allowed("hmc.algorithm", h.algorithm, hmc.ALGORITHMS)
    _allowed("hmc.init", h.init, hmc.INITS)
    _check("hmc.num_chains", h.num_chains, h.num_chains >= 2, "an integer >= 2 (R-hat)")
    _check("hmc.num_warmup", h.num_warmup, h.num_warmup >= 1, "an integer >= 1")
    _check("hmc.thin", h.thin, h.thin >= 1, "an integer >= 1")
    ok = h.num_samples >= 2 * h.thin
    _check("hmc.num_samples", h.num_samples, ok, f">= 2 * hmc.thin = {2 * h.thin}")
    _check("hmc.target_accept", h.target_accept, 0 < h.target_accept < 1, "in (0, 1)")
    _check("hmc.max_tree_depth", h.max_tree_depth, h.max_tree_depth >= 1, "an integer >= 1")
    steps = h.num_integration_steps
    _check("hmc.num_integration_steps", steps, steps >= 1, "an integer >= 1")
    _check("hmc.init_steps", h.init_steps, h.init_steps >= 0, "an integer >= 0")
    lr = h.init_learning_rate
    _check("hmc.init_learning_rate", lr, lr > 0, "> 0")
    e = cfg.ensemble
    _check("ensemble.num_members", e.num_members, e.num_members >= 1, "an integer >= 1")
    _check("ensemble.num_epochs", e.num_epochs, e.num_epochs >= 1, "an integer >= 1")
    _check("ensemble.batch_size", e.batch_size, e.batch_size >= 1, "an integer >= 1")
    _check("ensemble.learning_rate", e.learning_rate, e.learning_rate > 0, "> 0")
    _allowed("ensemble.lr_schedule", e.lr_schedule, ensemble.SCHEDULES)
    g = cfg.sgmcmc
    _allowed("sgmcmc.algorithm", g.algorithm, sgmcmc.ALGORITHMS)
    _allowed("sgmcmc.step_schedule", g.step_schedule, sgmcmc.SCHEDULES)
    _check("sgmcmc.num_iterations", g.num_iterations, g.num_iterations >= 1, "an integer >= 1")
    _check("sgmcmc.batch_size", g.batch_size, g.batch_size >= 1, "an integer >= 1")
    if g.step_size is not None:
        _check("sgmcmc.step_size", g.step_size, g.step_size > 0, "> 0 (or null)")
    _check("sgmcmc.thin", g.thin, g.thin >= 1, "an integer >= 1")
    multiple = g.num_iterations % g.thin == 0
    _check(
        "sgmcmc.num_iterations", g.num_iterations, multiple, f"a multiple of sgmcmc.thin={g.thin}"
    )
    burn = 0 <= g.burn_in < g.num_iterations
    _check("sgmcmc.burn_in", g.burn_in, burn, f"in [0, sgmcmc.num_iterations={g.num_iterations})")
    _check("sgmcmc.num_cycles", g.num_cycles, g.num_cycles >= 1, "an integer >= 1")
    steps = g.num_integration_steps
    _check("sgmcmc.num_integration_steps", steps, steps >= 1, "an integer >= 1")
    _check("sgmcmc.alpha", g.alpha, g.alpha > 0, "> 0")


def validate_vi(vi) -> None:
    """Values of the `vi:` section (checked whatever the method, so a sweep fails up front)."""
    from bnn_bench.inference.vi import ALGORITHM_FAMILIES
    from bnn_bench.inference.vi.family import FAMILIES, PROX_SCHEDULES

    _allowed("vi.algorithm", vi.algorithm, tuple(ALGORITHM_FAMILIES))
    _allowed("vi.family", vi.family, FAMILIES)
    supported = ALGORITHM_FAMILIES[vi.algorithm]
    if vi.family not in supported:
        raise ConfigError(
            f"vi.family={vi.family} is not allowed with vi.algorithm={vi.algorithm}; "
            f"choose one of: {', '.join(supported)}"
        )
    _check("vi.rank", vi.rank, vi.rank >= 1, "an integer >= 1")
    _check("vi.num_iterations", vi.num_iterations, vi.num_iterations >= 1, "an integer >= 1")
    _check("vi.batch_size", vi.batch_size, vi.batch_size >= 1, "an integer >= 1")
    least = 1 if vi.algorithm in ("advi", "gsm") else 2  # variances need two samples
    _check("vi.num_samples", vi.num_samples, vi.num_samples >= least, f"an integer >= {least}")
    _check("vi.prox_weight", vi.prox_weight, vi.prox_weight > 0, "> 0")
    _check("vi.prox_growth", vi.prox_growth, vi.prox_growth >= 0, ">= 0")
    _allowed("vi.prox_schedule", vi.prox_schedule, PROX_SCHEDULES)
    _check("vi.max_mean_step", vi.max_mean_step, vi.max_mean_step > 0, "> 0")
    _check("vi.max_var_ratio", vi.max_var_ratio, vi.max_var_ratio > 1, "> 1")
    _check("vi.inner_steps", vi.inner_steps, vi.inner_steps >= 1, "an integer >= 1")
    _check("vi.inner_tol", vi.inner_tol, vi.inner_tol > 0, "> 0")
    _check("vi.learning_rate", vi.learning_rate, vi.learning_rate > 0, "> 0")
    se = vi.snapshot_every
    _check("vi.snapshot_every", se, se >= 0, "an integer >= 0 (0: no control variate)")
    _check("vi.bam_lambda0", vi.bam_lambda0, vi.bam_lambda0 > 0, "> 0")
    n = vi.num_predictive_samples
    _check("vi.num_predictive_samples", n, n >= 1, "an integer >= 1")
    _check("vi.init_std", vi.init_std, vi.init_std > 0, "> 0")
