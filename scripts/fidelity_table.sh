#!/usr/bin/env bash
# The docs/results/fidelity.md digits table: every method at its defaults and at two or three
# budgets against the shipped NUTS reference (reference=digits_mlp), one run at a time; then
# bnn-bench-report writes the table into $OUT. PY defaults to .venv/bin/python; SEEDS (default
# "0") repeats every row per seed.
set -euo pipefail
OUT=${OUT:-outputs/fidelity/digits}
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-0}
run() {  # run NAME OVERRIDES...
  local name=$1; shift
  for seed in $SEEDS; do
    local dir="$OUT/$name-seed$seed"
    [ -f "$dir/results.json" ] && continue
    "$PY" -m bnn_bench.run "$@" seed="$seed" reference=digits_mlp logger=none progress=false \
      "hydra.run.dir=$dir" 2>&1 | grep -E "done|error" || true
  done
}
# SMC, the paper's formulation (smc.path=minibatch): every schedule at K = 1,000, ctr at 250 too
P="smc.path=minibatch"
for s in ctr full constant linear automated sda ctr_adaptive; do
  run "smc_minibatch_$s" method=smc $P schedule=$s
done
run smc_minibatch_ctr_K250 method=smc $P schedule=ctr smc.num_iterations=250
# SMC, the exact sampler (the default: nested, automated, 10 final sweeps), without the sweeps,
# nested ctr and tempered
run smc_default method=smc
run smc_nested_automated_sweeps0 method=smc smc.final_sweeps=0
run smc_nested_ctr method=smc schedule=ctr smc.num_iterations=20
run smc_tempered method=smc smc.path=tempered
# VI: every algorithm at 250, 1,000 (the default) and 4,000 iterations
for a in score_prox advi gsm bam; do
  for t in 250 1000 4000; do
    run "vi_${a}_T$t" method=vi vi.algorithm=$a vi.num_iterations=$t
  done
done
# Deep ensembles: 1, 5 (the default), 64 members at 100 epochs; 5 members at 25 and 400 epochs
for m in 1 5 64; do run "ensemble_${m}" method=ensemble ensemble.num_members=$m; done
run ensemble_5_E25 method=ensemble ensemble.num_epochs=25
run ensemble_5_E400 method=ensemble ensemble.num_epochs=400
# SG-MCMC: SGLD at 2,500 / 10,000 (the default) / 40,000 steps (burn-in a fifth, 200 kept),
# cyclical SGLD, SGHMC at 500 / 2,000 / 8,000 steps of 5 gradients
run sgld_2500 method=sgmcmc sgmcmc.num_iterations=2500 sgmcmc.burn_in=500 sgmcmc.thin=10
run sgld_10000 method=sgmcmc
run sgld_40000 method=sgmcmc sgmcmc.num_iterations=40000 sgmcmc.burn_in=8000 sgmcmc.thin=160
run sgld_cyclical method=sgmcmc sgmcmc.step_schedule=cyclical sgmcmc.step_size=3e-4
for t in 500 2000 8000; do
  run "sghmc_$t" method=sgmcmc sgmcmc.algorithm=sghmc sgmcmc.num_iterations=$t \
    sgmcmc.burn_in=$((t / 5)) sgmcmc.thin=$((t / 250))
done
"$PY" -m bnn_bench.report "$OUT"
