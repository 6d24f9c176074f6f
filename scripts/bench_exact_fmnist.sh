#!/usr/bin/env bash
# The docs/results/exact-smc.md FashionMNIST comparison: the exact sampler (nested automated, the
# CLI default, and tempered) beside the SMC paper's formulation and one MAP fit, on the CNN with
# 500 training images (the first 2,000 test images), at two example-gradient budgets, per seed,
# one run at a time:
#   OUT=outputs/bench_exact_fmnist SEEDS="0 1 2" BUDGETS="small large" scripts/bench_exact_fmnist.sh
# (BUDGETS="xlarge": 3x the large budget with its moves.)
# A budget is a stopping rule (smc.budget): the exact paths run to the posterior, then add final
# sweeps until the run has spent the budget; the paper's formulation gets the K that spends it.
# Baselines: one MAP fit, and a deep ensemble of 8 MAP fits (J = 8, about the small budget).
# The exact runs start at h = 0.01: the default 0.1 is ten times the CNN's fan-in prior sds and
# needs four retries of its first move. Then scripts/label_table.py writes the table and the
# reliability diagrams (one per run label, seeds pooled) into $OUT.
set -euo pipefail
OUT=${OUT:-outputs/bench_exact_fmnist}
SEEDS=${SEEDS:-0 1 2}
BUDGETS=${BUDGETS:-small large}
DATA="dataset.n_train=500 dataset.n_test=2000 logger=none progress=false"
CNN="dataset=fashion_mnist model=cnn prior.std=1.0 prior.scale=fan_in"
EXACT="smc.num_particles=8 proposal.step_size=0.01"
declare -A MOVES=([small]="smc.num_mcmc_steps=1 proposal.num_steps=3"
                  [large]="smc.num_mcmc_steps=2 proposal.num_steps=5"
                  [xlarge]="smc.num_mcmc_steps=2 proposal.num_steps=5")
declare -A BUDGET=([small]=400000 [large]=1200000 [xlarge]=3600000)
run() {  # run DIR ARGS...: one job, its summary line (a finished one is kept: rerun to resume)
  local dir=$1
  shift
  if [ -f "$OUT/$dir/$seed/results.json" ]; then
    return 0
  fi
  # shellcheck disable=SC2068
  nice -n 19 .venv/bin/bnn-bench $@ seed="$seed" "hydra.run.dir=$OUT/$dir/$seed" 2>&1 | grep "done"
}
for seed in $SEEDS; do
  run map $CNN $DATA method=ensemble ensemble.num_members=1
  run ensemble8 $CNN $DATA method=ensemble ensemble.num_members=8
  for budget in $BUDGETS; do
    run "nested-$budget" $CNN $DATA $EXACT ${MOVES[$budget]} smc.path=nested \
      schedule=automated smc.budget=${BUDGET[$budget]}
    run "tempered-$budget" $CNN $DATA $EXACT ${MOVES[$budget]} smc.path=tempered \
      smc.budget=${BUDGET[$budget]}
    run "paper-$budget" experiment=fmnist_cnn_reduced $DATA \
      smc.num_iterations=null smc.budget=${BUDGET[$budget]}
  done
done
labels=(map ensemble8)
for budget in $BUDGETS; do
  labels+=("nested-$budget" "tempered-$budget" "paper-$budget")
done
.venv/bin/python scripts/label_table.py "$OUT" "${labels[@]}" | tee "$OUT/table.md"
