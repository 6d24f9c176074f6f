#!/usr/bin/env bash
# The docs/results/fidelity.md digits table: every method at its defaults (and a few budgets)
# against the shipped NUTS reference (reference=digits_mlp), one run at a time under nice; then
# bnn-bench-report writes the table into $OUT. PY defaults to .venv/bin/python.
set -euo pipefail
OUT=${OUT:-outputs/fidelity/digits}
PY=${PY:-.venv/bin/python}
run() {  # run NAME OVERRIDES...
  local name=$1; shift
  [ -f "$OUT/$name/results.json" ] && return 0
  nice -n 10 "$PY" -m bnn_bench.run "$@" reference=digits_mlp logger=none progress=false \
    "hydra.run.dir=$OUT/$name" 2>&1 | grep -E "done|error" || true
}
run smc_ctr method=smc
run smc_full method=smc schedule=full
run smc_constant method=smc schedule=constant
run vi_score_prox method=vi
run vi_advi method=vi vi.algorithm=advi
run ensemble_1 method=ensemble ensemble.num_members=1
run ensemble_5 method=ensemble
run ensemble_64 method=ensemble ensemble.num_members=64
run sgld method=sgmcmc
run sgld_cyclical method=sgmcmc sgmcmc.step_schedule=cyclical sgmcmc.step_size=3e-4
run sghmc method=sgmcmc sgmcmc.algorithm=sghmc sgmcmc.num_iterations=2000 sgmcmc.burn_in=400 \
  sgmcmc.thin=8
"$PY" -m bnn_bench.report "$OUT"
