"""The method registry: `METHODS[cfg.method.name]` is everything the runner knows of a method.

Adding a method is one module here defining `METHOD = Method(...)` (see base.py), one entry
below and its conf/method/<name>.yaml.
"""

from bnn_bench.methods import ensemble, hmc, sgmcmc, smc, vi
from bnn_bench.methods.base import Job, Method

METHODS: dict[str, Method] = {
    m.name: m for m in (smc.METHOD, vi.METHOD, hmc.METHOD, ensemble.METHOD, sgmcmc.METHOD)
}

__all__ = ["METHODS", "Job", "Method"]
