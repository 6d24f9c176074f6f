"""No config, preset or override can make Hydra run code outside the allow-list (issue 17, item 4).

The checks run on the composed `hydra:` node in bnn-bench's preflight, before Hydra starts; the
CLI cases assert that the payload (a file copy) never happens.
"""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from bnn_bench.errors import ConfigError
from bnn_bench.hydra_safety import check_hydra, check_searchpath_overrides
from bnn_bench.preflight import CONFIG_DIR


@pytest.fixture
def hydra_node():
    """The composed, unresolved hydra: node for some overrides."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        yield lambda *o: OmegaConf.to_container(
            compose(config_name="config", overrides=list(o), return_hydra_config=True).hydra,
            resolve=False,
        )
    GlobalHydra.instance().clear()


def test_the_shipped_configs_pass(hydra_node):
    check_hydra(hydra_node())
    for launcher in ("joblib", "slurm", "submitit_local", "submitit_slurm", "basic"):
        check_hydra(hydra_node(f"hydra/launcher={launcher}"))
    for preset in sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml")):
        check_hydra(hydra_node(f"experiment={preset}"))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            ["+hydra.callbacks.evil._target_=shutil.copyfile", "+hydra.callbacks.evil.src=a"],
            "hydra.callbacks.evil is not allowed",
        ),
        (["hydra.launcher._target_=os.system"], "hydra.launcher._target_=os.system"),
        (["hydra.sweeper._target_=subprocess.run"], "hydra.sweeper._target_=subprocess.run"),
        (["+hydra.job.evil._target_=os.system"], "hydra.job.evil._target_=os.system"),
        (["+hydra.launcher.evil._target_=os.system"], "hydra.launcher.evil._target_"),
        (["hydra.job_logging.handlers.console.class=logging.config.listen"], "class="),
        (["hydra.job_logging.handlers.console.stream=ext://os.system"], "ext:// imports"),
        (["hydra.job_logging.handlers.file.filename=/home/u/.bashrc"], "output directory"),
        (
            ["hydra.job_logging.handlers.file.filename=${hydra.runtime.output_dir}/../../x"],
            "output directory",
        ),
        (["+hydra.job.env_set.LD_PRELOAD=/tmp/evil.so"], "LD_PRELOAD makes programs load code"),
        (["+hydra.job.env_set.PYTHONSTARTUP=/tmp/evil.py"], "PYTHONSTARTUP"),
        (["hydra/launcher=slurm", "hydra.launcher.setup=[curl x|sh]"], "setup[0]"),
        (["hydra/launcher=slurm", "hydra.launcher.setup=['export A=`id`']"], "setup[0]"),
    ],
)
def test_code_in_a_hydra_section_is_refused(hydra_node, overrides, match):
    with pytest.raises(ConfigError, match=match.replace("[", r"\[")):
        check_hydra(hydra_node(*overrides))


def test_what_the_grammar_cannot_say_a_preset_can_and_is_refused(tmp_path, hydra_node):
    """Presets found through hydra.searchpath: a logging factory `()` and a callback."""
    presets = tmp_path / "conf" / "experiment"
    presets.mkdir(parents=True)
    (presets / "factory.yaml").write_text(
        "# @package _global_\nhydra:\n  job_logging:\n    filters:\n      f:\n"
        "        (): os.system\n"
    )
    (presets / "callback.yaml").write_text(
        "# @package _global_\nhydra:\n  callbacks:\n    c:\n      _target_: shutil.rmtree\n"
    )
    search = f"hydra.searchpath=[file://{tmp_path / 'conf'}]"
    with pytest.raises(ConfigError, match=r"filters.f.\(\)=os.system is not allowed"):
        check_hydra(hydra_node(search, "experiment=factory"))
    with pytest.raises(ConfigError, match="hydra.callbacks.c is not allowed"):
        check_hydra(hydra_node(search, "experiment=callback"))
    check_hydra(hydra_node(search))  # a file:// search path by itself is fine


def test_a_pkg_search_path_is_refused_before_composing():
    for override in ("hydra.searchpath=[pkg://os]", "+hydra.searchpath=[file:///a,pkg://b]"):
        with pytest.raises(ConfigError, match="pkg:// search path imports a package"):
            check_searchpath_overrides([override])
    check_searchpath_overrides(["hydra.searchpath=[file:///a]", "seed=1"])


def _evil_preset(tmp_path, dst):
    presets = tmp_path / "conf" / "experiment"
    presets.mkdir(parents=True)
    (presets / "evil.yaml").write_text(
        "# @package _global_\nhydra:\n  callbacks:\n    evil:\n      _target_: shutil.copyfile\n"
        f"      src: {__file__}\n      dst: {dst}\n"
    )
    return tmp_path / "conf"


CLI_CASES = {
    "callback override": lambda t, dst: [
        "+hydra.callbacks.evil._target_=shutil.copyfile",
        f"+hydra.callbacks.evil.src={__file__}",
        f"+hydra.callbacks.evil.dst={dst}",
    ],
    "preset via searchpath": lambda t, dst: [
        f"hydra.searchpath=[file://{_evil_preset(t, dst)}]",
        "experiment=evil",
    ],
    "preset via --config-dir": lambda t, dst: [
        "experiment=evil",
        "--config-dir",
        str(_evil_preset(t, dst)),
    ],
    "multirun sweeper": lambda t, dst: ["seed=0,1", "hydra.sweeper._target_=os.system", "-m"],
    "pickle rerun": lambda t, dst: ["--experimental-rerun", str(t / "config.pickle")],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CLI_CASES))
def test_the_cli_refuses_before_hydra_runs_anything(tmp_path, run_cli, case):
    dst = tmp_path / "copied"
    out = tmp_path / "run"
    args = CLI_CASES[case](tmp_path, dst)
    short = ["model=linear", "smc.num_iterations=2", "logger=none", "progress=false"]
    short += [f"hydra.run.dir={out}", f"hydra.sweep.dir={out}"]
    proc = run_cli(*short, *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("bnn-bench: error:"), proc.stderr
    assert "not allowed" in lines[0]
    assert not dst.exists() and not out.exists()
