#!/usr/bin/env bash
# The docs/results/vi.md benchmark: 4 algorithms x 3 seeds, one run at a time, under nice;
# then bnn-bench-report writes the table and the neg_elbo-vs-time plot into $OUT.
# Iterations per algorithm give each about the same wall-clock training budget (75 s here),
# from per-iteration times measured on this machine (see docs/results/vi.md).
set -euo pipefail
OUT=${OUT:-outputs/bench_vi}
declare -A ITERS=([score_prox]=400 [advi]=400 [gsm]=450 [bam]=420)
for seed in 0 1 2; do
  for algorithm in score_prox advi gsm bam; do
    nice -n 19 .venv/bin/bnn-bench experiment=fmnist_cnn_vi_reduced vi.algorithm=$algorithm \
      vi.num_iterations=${ITERS[$algorithm]} vi.num_predictive_samples=16 seed=$seed \
      logger=none progress=false "hydra.run.dir=$OUT/$algorithm/$seed" 2>&1 | grep "done"
  done
done
.venv/bin/bnn-bench-report "$OUT"
