#!/usr/bin/env bash
# The docs/results/vi.md FashionMNIST benchmark (the paper's claim, tested): VI algorithms x
# seeds on experiment=fmnist_cnn_vi_reduced, one run at a time, under nice; then
# bnn-bench-report --per-seed writes the table into $OUT and paired_diff.py the paired
# differences of score_prox against advi.
#   OUT=outputs/bench_vi SEEDS="0 1 2 3 4" ALGORITHMS="score_prox advi bam" scripts/bench_vi.sh
# ITERS gives each algorithm about the same wall-clock training budget, from per-iteration times
# measured on this machine. The tuned settings (chosen on a validation split) are the preset's;
# EXTRA adds overrides to every run (each vi.* step key is read only by its own algorithm).
set -euo pipefail
OUT=${OUT:-outputs/bench_vi}
SEEDS=${SEEDS:-0 1 2 3 4}
ALGORITHMS=${ALGORITHMS:-score_prox advi bam}
declare -A ITERS=([score_prox]=400 [advi]=560 [gsm]=560 [bam]=560)
EXTRA=${EXTRA:-}
for seed in $SEEDS; do
  for algorithm in $ALGORITHMS; do
    # shellcheck disable=SC2086
    nice -n 19 .venv/bin/bnn-bench experiment=fmnist_cnn_vi_reduced vi.algorithm=$algorithm \
      vi.num_iterations=${ITERS[$algorithm]} $EXTRA seed=$seed \
      logger=none progress=false "hydra.run.dir=$OUT/$algorithm/$seed" 2>&1 | grep "done"
  done
done
.venv/bin/bnn-bench-report --per-seed "$OUT"
if [ -d "$OUT/score_prox" ] && [ -d "$OUT/advi" ]; then
  .venv/bin/python scripts/paired_diff.py "$OUT/score_prox" "$OUT/advi" | tee "$OUT/paired.md"
fi
