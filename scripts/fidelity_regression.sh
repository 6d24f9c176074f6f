#!/usr/bin/env bash
# The docs/results/fidelity.md regression tables, one run at a time under nice:
# 1. synthetic_regression with model=linear against the exact Gaussian posterior predictive
#    (scripts/make_reference.py --exact: W2 is exact there);
# 2. dataset=diabetes with the default MLP against a NUTS reference (method=hmc), whose
#    second, independent run (seed=1) gives the noise floor.
set -euo pipefail
OUT=${OUT:-outputs/fidelity}
PY=${PY:-.venv/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's bnn_bench for scripts/
run() {  # run DIR OVERRIDES...
  local dir=$1; shift
  [ -f "$dir/results.json" ] && return 0
  nice -n 10 "$PY" -m bnn_bench.run "$@" logger=none progress=false "hydra.run.dir=$dir" 2>&1 \
    | grep -E "done|error" || true
}
SYN=(dataset=synthetic_regression model=linear likelihood=gaussian likelihood.noise_std=0.5)
mkdir -p "$OUT/synthetic"
[ -f "$OUT/synthetic/exact.npz" ] || nice -n 10 "$PY" scripts/make_reference.py \
  --out "$OUT/synthetic/exact.npz" --exact 1000 "${SYN[@]}"
REF="reference=$OUT/synthetic/exact.npz"
run "$OUT/synthetic/hmc" "${SYN[@]}" method=hmc "$REF"
run "$OUT/synthetic/smc_exact" "${SYN[@]}" method=smc "$REF"  # the default: nested, automated
run "$OUT/synthetic/smc_full" "${SYN[@]}" method=smc smc.path=minibatch schedule=full "$REF"
run "$OUT/synthetic/smc_ctr" "${SYN[@]}" method=smc smc.path=minibatch schedule=ctr \
  schedule.batch_size=100 "$REF"
run "$OUT/synthetic/vi_score_prox" "${SYN[@]}" method=vi "$REF"
run "$OUT/synthetic/vi_advi" "${SYN[@]}" method=vi vi.algorithm=advi "$REF"
run "$OUT/synthetic/ensemble_5" "${SYN[@]}" method=ensemble "$REF"
run "$OUT/synthetic/sgld" "${SYN[@]}" method=sgmcmc "$REF"
"$PY" -m bnn_bench.report "$OUT/synthetic"

DIA=(dataset=diabetes likelihood=gaussian likelihood.noise_std=0.7)
run "$OUT/diabetes/hmc_seed0" "${DIA[@]}" method=hmc
REF="reference=$OUT/diabetes/hmc_seed0/reference.npz"
run "$OUT/diabetes/hmc_seed1" "${DIA[@]}" method=hmc seed=1 "$REF"
run "$OUT/diabetes/smc_exact" "${DIA[@]}" method=smc "$REF"  # the default: nested, automated
run "$OUT/diabetes/smc_ctr" "${DIA[@]}" method=smc smc.path=minibatch schedule=ctr \
  schedule.batch_size=100 "$REF"
run "$OUT/diabetes/smc_full" "${DIA[@]}" method=smc smc.path=minibatch schedule=full "$REF"
run "$OUT/diabetes/vi_score_prox" "${DIA[@]}" method=vi "$REF"
run "$OUT/diabetes/ensemble_5" "${DIA[@]}" method=ensemble "$REF"
run "$OUT/diabetes/sgld" "${DIA[@]}" method=sgmcmc "$REF"
"$PY" -m bnn_bench.report "$OUT/diabetes"
