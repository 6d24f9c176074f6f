"""Config schemas (registered in Hydra's ConfigStore) and the value checks that types can't express.

Types are enforced by OmegaConf when configs are composed; `validate` then rejects impossible
values with a ConfigError naming the key, the value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from bnn_bench.errors import ConfigError


@dataclass
class MethodConfig:
    name: str = "smc"


@dataclass
class SMCSettings:
    num_particles: int = 64
    num_iterations: int = 1000
    resample_threshold: float = 0.5
    resampler: str = "systematic"
    weights: str = "energy"


@dataclass
class ScheduleConfig:
    name: str = "ctr"
    batch_size: int = 500
    refine_at: float = 0.9
    slope: float | None = None
    # adaptive schedules (automated, sda, ctr_adaptive; docs/algorithms.md)
    noise_tol: float = 1.0
    entropy_tol: float = 0.01
    window: int = 5
    growth: float = 2.0
    refine_iterations: int | None = None
    signal: str = "loglik"
    loglik_tol: float = 0.01


@dataclass
class ProposalConfig:
    name: str = "hmc"
    num_steps: int = 3
    step_size: float = 0.002
    adapt_step_size: bool = False
    target_accept: float = 0.65
    adapt_rate: float = 1.0
    mass: str = "identity"
    max_steps: int = 10
    learning_rate: float = 0.05


@dataclass
class DatasetConfig:
    name: str = "digits"
    root: str | None = None
    path: str | None = None
    n_train: int | None = None
    n_test: int | None = None
    test_fraction: float = 0.2
    task: str | None = None
    dim: int = 5
    noise_std: float = 0.5


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
    eval_chunk: int = 2000


@dataclass
class LoggerConfig:
    name: str = "wandb"
    mode: str = "online"
    project: str = "bnn-bench"
    entity: str | None = None
    group: str | None = None


@dataclass
class Config:
    method: MethodConfig = field(default_factory=MethodConfig)
    smc: SMCSettings = field(default_factory=SMCSettings)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    proposal: ProposalConfig = field(default_factory=ProposalConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    likelihood: LikelihoodConfig = field(default_factory=LikelihoodConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    experiment: str | None = None
    seed: int = 0
    save_posterior: bool = False
    eval_every: int = 0
    log_every: int = 10
    progress: bool = True


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


def validate(cfg) -> None:
    """Reject impossible values before any work starts (dataset-size checks happen at load)."""
    from bnn_bench.inference.smc.proposals import MASSES, PROPOSALS
    from bnn_bench.inference.smc.sampler import RESAMPLERS, WEIGHTS
    from bnn_bench.inference.smc.schedules import SCHEDULES, SIGNALS

    _allowed("method", cfg.method.name, ("smc",))
    smc = cfg.smc
    _check("smc.num_particles", smc.num_particles, smc.num_particles >= 2, "an integer >= 2")
    _check("smc.num_iterations", smc.num_iterations, smc.num_iterations >= 1, "an integer >= 1")
    t = smc.resample_threshold
    _check("smc.resample_threshold", t, 0 <= t <= 1, "in [0, 1]")
    _allowed("smc.resampler", smc.resampler, tuple(RESAMPLERS))
    _allowed("smc.weights", smc.weights, WEIGHTS)
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
    _check("proposal.step_size", p.step_size, p.step_size > 0, "> 0")
    ta = p.target_accept
    _check("proposal.target_accept", ta, 0 < ta < 1, "in (0, 1)")
    _check("proposal.adapt_rate", p.adapt_rate, p.adapt_rate > 0, "> 0")
    _allowed("proposal.mass", p.mass, MASSES)
    _check("proposal.max_steps", p.max_steps, p.max_steps >= 1, "an integer >= 1")
    lr = p.learning_rate
    _check("proposal.learning_rate", lr, lr > 0, "> 0")
    d = cfg.dataset
    _check("dataset.test_fraction", d.test_fraction, 0 < d.test_fraction < 1, "in (0, 1)")
    if d.n_train is not None:
        _check("dataset.n_train", d.n_train, d.n_train >= 1, "an integer >= 1 (or null)")
    if d.name == "npz" and not d.path:
        raise ConfigError("dataset.path is required for dataset=npz: an .npz file with x and y")
    _check("prior.std", cfg.prior.std, cfg.prior.std > 0, "> 0")
    _allowed("prior.scale", cfg.prior.scale, ("none", "fan_in"))
    _allowed("likelihood", cfg.likelihood.name, ("categorical", "gaussian"))
    nstd = cfg.likelihood.noise_std
    _check("likelihood.noise_std", nstd, nstd > 0, "> 0")
    h = cfg.hardware
    _allowed("hardware.platform", h.platform, ("cpu", "gpu", "cuda", "tpu"))
    _allowed("hardware.dtype", h.dtype, ("float32", "float64"))
    if h.particle_chunk is not None:
        pc = h.particle_chunk
        _check("hardware.particle_chunk", pc, pc >= 1, "an integer >= 1 (or null for all)")
    _allowed("hardware.particle_map", h.particle_map, ("auto", "vmap", "unroll"))
    _check("hardware.eval_chunk", h.eval_chunk, h.eval_chunk >= 1, "an integer >= 1")
    _allowed("logger", cfg.logger.name, ("wandb", "none"))
    _allowed("logger.mode", cfg.logger.mode, ("online", "offline", "disabled"))
    _check("eval_every", cfg.eval_every, cfg.eval_every >= 0, ">= 0 (0: only at the end)")
    _check("log_every", cfg.log_every, cfg.log_every >= 1, "an integer >= 1")


def validate_against_data(cfg, num_data: int) -> None:
    """Checks that need the training-set size N."""
    c = cfg.schedule.batch_size
    if cfg.schedule.name != "full" and c > num_data:
        raise ConfigError(
            f"schedule.batch_size={c} is not allowed; it must be between 1 and N={num_data} "
            f"(the training-set size of dataset={cfg.dataset.name})"
        )
