"""The real configs compose, every group option exists, and presets load."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from bnn_bench.config import validate
from bnn_bench.preflight import CONFIG_DIR

GROUPS = {
    "method": {"smc"},
    "schedule": {"full", "constant", "ctr", "linear", "automated", "sda", "ctr_adaptive"},
    "proposal": {"hmc", "langevin", "chees"},
    "dataset": {"digits", "fashion_mnist", "mnist", "npz", "synthetic_regression"},
    "model": {"linear", "mlp", "lenet5", "cnn"},
    "likelihood": {"categorical", "gaussian"},
    "hardware": {"cpu", "gpu"},
    "logger": {"wandb", "none"},
}


@pytest.fixture
def composer():
    """Compose as the runner does before it builds anything: the path-dependent defaults filled
    (config.resolve_path_defaults), the values not yet checked."""
    from bnn_bench.config import resolve_path_defaults

    def composed(*overrides):
        cfg = compose(config_name="config", overrides=list(overrides))
        resolve_path_defaults(cfg)
        return cfg

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        yield composed
    GlobalHydra.instance().clear()


def test_defaults(composer):
    cfg = composer()
    assert (cfg.method.name, cfg.schedule.name, cfg.proposal.name) == ("smc", "automated", "hmc")
    assert (cfg.dataset.name, cfg.model.name, cfg.likelihood.name) == (
        "digits",
        "mlp",
        "categorical",
    )
    assert cfg.logger.name == "wandb"
    assert cfg.smc.path == "nested"
    validate(cfg)
    assert (cfg.schedule.batch_size, cfg.schedule.refine_at) == (100, 0.9)
    assert (cfg.proposal.num_steps, cfg.proposal.step_size) == (10, 0.1)
    assert cfg.proposal.adapt_step_size and cfg.proposal.correction == "mh"
    assert (cfg.smc.num_iterations, cfg.smc.final_sweeps) == (20, 10)


def test_path_defaults_fill_only_what_is_unset(composer):
    from bnn_bench.config import PATH_DEFAULTS

    cfg = composer("smc.path=minibatch")
    validate(cfg)  # the SMC paper's values
    assert (cfg.smc.num_iterations, cfg.schedule.batch_size) == (1000, 500)
    assert (cfg.proposal.num_steps, cfg.proposal.step_size) == (3, 0.002)
    assert not cfg.proposal.adapt_step_size and cfg.proposal.correction == "none"
    assert cfg.smc.final_sweeps == 0
    cfg = composer("proposal.step_size=0.05", "smc.num_iterations=7", "proposal=langevin")
    validate(cfg)  # what is set wins; langevin's S = 1 comes from its option
    assert (cfg.proposal.step_size, cfg.smc.num_iterations, cfg.proposal.num_steps) == (0.05, 7, 1)
    for preset in ("paper_fmnist_cnn_reduced", "paper_mnist_lenet5", "fmnist_cnn_reduced"):
        cfg = composer(f"experiment={preset}")
        validate(cfg)
        assert (cfg.smc.path, cfg.schedule.name, cfg.proposal.correction) == (
            "minibatch",
            "ctr",
            "none",
        )
    assert set(PATH_DEFAULTS) == {"nested", "tempered", "minibatch"}
    assert set(PATH_DEFAULTS["nested"]) == set(PATH_DEFAULTS["minibatch"])


def test_every_group_option_exists_and_composes(composer):
    for group, options in GROUPS.items():
        found = {p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml")}
        assert options <= found, group
        for option in options:
            cfg = composer(f"{group}={option}")
            assert cfg[group].name == option


def test_langevin_is_one_step(composer):
    from bnn_bench.errors import ConfigError

    assert composer("proposal=langevin").proposal.num_steps == 1
    # every path (and smc.budget's cost) reads proposal.num_steps, so langevin can't be given more
    for path in ("minibatch", "nested"):
        with pytest.raises(
            ConfigError, match="proposal.num_steps=5 is not allowed with proposal=langevin"
        ):
            validate(composer("proposal=langevin", "proposal.num_steps=5", f"smc.path={path}"))


def test_experiment_presets_compose_and_validate(composer):
    presets = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
    assert "fmnist_cnn_reduced" in presets
    for name in presets:
        cfg = composer(f"experiment={name}")
        validate(cfg)
        assert cfg.experiment == name


def test_a_preset_overrides_the_primary_config(composer):
    # the preset's values win over config.yaml's (the defaults list puts experiment after _self_)
    cfg = composer("experiment=fmnist_cnn_reduced")
    assert (cfg.dataset.name, cfg.model.name) == ("fashion_mnist", "cnn")
    assert (cfg.smc.num_particles, cfg.smc.num_iterations) == (8, 80)
    assert (cfg.dataset.n_train, cfg.schedule.batch_size, cfg.prior.std) == (1000, 100, 1.0)
    assert (cfg.schedule.refine_at, cfg.proposal.adapt_step_size) == (0.8, True)
    # the reproduction's preset inherits it but keeps the paper's r and fixed h
    paper = composer("experiment=paper_fmnist_cnn_reduced")
    assert (paper.schedule.refine_at, paper.proposal.adapt_step_size) == (0.9, False)
    assert (paper.dataset.n_train, paper.schedule.batch_size) == (500, 50)
    # and the command line wins over the preset
    cfg = composer("experiment=fmnist_cnn_reduced", "smc.num_particles=4", "schedule=full")
    assert (cfg.smc.num_particles, cfg.schedule.name) == (4, "full")


def test_wandb_group_and_job_type(composer):
    from bnn_bench.methods import METHODS
    from bnn_bench.tracking import wandb_names as names

    def wandb_names(cfg, **kw):
        return names(cfg, METHODS[cfg.method.name].labels(cfg), **kw)

    cfg = composer("schedule=full", "seed=3")
    assert wandb_names(cfg, multirun=False, sweep_dir="x") == (
        "default",
        "smc/full",
        "smc-full-hmc-seed3",
    )
    # a sweep groups its jobs under the sweep directory's name
    assert wandb_names(cfg, multirun=True, sweep_dir="outputs/multirun/d/12-00-00")[0] == "12-00-00"
    # an experiment names the group, and logger.group wins over both
    cfg = composer("experiment=fmnist_cnn_reduced")
    assert wandb_names(cfg, multirun=True, sweep_dir="s")[0] == "fmnist_cnn_reduced"
    cfg = composer("experiment=fmnist_cnn_reduced", "logger.group=mine")
    assert wandb_names(cfg, multirun=True, sweep_dir="s")[0] == "mine"
    # VI jobs are named after the algorithm
    cfg = composer("method=vi", "vi.algorithm=advi", "seed=1")
    assert wandb_names(cfg, multirun=False, sweep_dir="x")[1:] == ("vi/advi", "vi-advi-seed1")


def test_particle_map_auto_unrolls_convolutions_on_cpu_only(composer):
    from bnn_bench.build import particle_map

    assert particle_map(composer()) == "vmap"
    assert particle_map(composer("model=cnn")) == "unroll"
    assert particle_map(composer("model=lenet5", "hardware=gpu")) == "vmap"
    assert particle_map(composer("model=cnn", "hardware.particle_map=vmap")) == "vmap"


def test_cpu_scheduler_auto_is_memory_where_particles_are_unrolled(composer):
    from bnn_bench.build import cpu_scheduler

    assert cpu_scheduler(composer()) == "concurrency"
    assert cpu_scheduler(composer("model=cnn")) == "memory"
    assert cpu_scheduler(composer("model=cnn", "hardware.particle_map=vmap")) == "concurrency"
    assert cpu_scheduler(composer("model=cnn", "hardware=gpu")) == "concurrency"
    assert cpu_scheduler(composer("hardware.cpu_scheduler=memory")) == "memory"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("schedule.signal=foo", "schedule.signal=foo is not allowed; choose one of: entropy"),
        ("schedule.growth=1", "schedule.growth=1.0 is not allowed; it must be > 1"),
        ("schedule.window=0", "schedule.window=0 is not allowed"),
        ("schedule.refine_iterations=0", "schedule.refine_iterations=0 is not allowed"),
        ("proposal.mass=full", "proposal.mass=full is not allowed; choose one of: identity, diag"),
        ("proposal.target_accept=1.5", "proposal.target_accept=1.5 is not allowed"),
        ("proposal.max_steps=0", "proposal.max_steps=0 is not allowed"),
        ("hardware.data_chunk=0", "hardware.data_chunk=0 is not allowed; it must be an integer"),
    ],
)
def test_adaptive_keys_are_validated(composer, override, message):
    from bnn_bench.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate(composer("smc.path=minibatch", override))


def test_adaptive_plan_and_proposal_from_config(composer):
    from bnn_bench.build import proposal as proposal_from_config
    from bnn_bench.build import schedule_plan
    from bnn_bench.inference.smc.schedules import refine_iterations

    cfg = composer("schedule=ctr_adaptive", "smc.num_iterations=80", "proposal=chees")
    plan = schedule_plan(cfg, 1000)
    assert (plan.name, refine_iterations(plan), plan.num_data) == ("ctr_adaptive", 8, 1000)
    assert refine_iterations(schedule_plan(composer("schedule.refine_iterations=3"), 10)) == 3
    proposal = proposal_from_config(cfg)
    assert proposal.name == "chees" and proposal.adaptive
    assert not proposal_from_config(composer("smc.path=minibatch")).adaptive


def test_library_defaults_are_the_clis(composer):
    # The schema takes its defaults from the library's NamedTuples and no yaml option restates
    # them differently: what a test gets from the library is what a user gets from the CLI.
    from bnn_bench import build
    from bnn_bench.inference.smc.proposals import Proposal
    from bnn_bench.inference.smc.sampler import SMCConfig
    from bnn_bench.inference.smc.schedules import SchedulePlan
    from bnn_bench.inference.vi.family import VIConfig

    cfg = composer("smc.path=minibatch", "schedule=ctr")  # the library's SMC is this path's
    smc = build.smc_config(cfg)
    assert smc._replace(proposal=None, particle_map="vmap") == SMCConfig(None)
    assert build.proposal(cfg) == Proposal(cfg.proposal.num_steps, cfg.proposal.step_size)
    plan = build.schedule_plan(cfg, 1000)
    assert plan == SchedulePlan("ctr", 1000, cfg.smc.num_iterations, cfg.schedule.batch_size)
    vi = build.vi_config(composer("method=vi"), 1000)
    assert vi._replace(sample_map="scan") == VIConfig()
    for option in ("hmc", "langevin", "chees"):
        p = build.proposal(composer("smc.path=minibatch", f"proposal={option}"))
        assert p._replace(num_steps=0, step_size=0.0, name="") == Proposal(0, 0.0, name="")
