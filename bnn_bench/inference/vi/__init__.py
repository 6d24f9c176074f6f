"""Score-based VI over network weights: score_prox (our formulation) and ADVI, GSM, BaM baselines.

Every algorithm module has `init(q, config) -> state` and a jitted
`step(rng_key, state, x, y, *, log_target, config) -> (state, VIInfo)`; `state.q` is the current
Gaussian. The family and the streamed score computation live in `family`.
"""

from bnn_bench.inference.vi import advi, bam, gsm, score_prox

ALGORITHMS = {"score_prox": score_prox, "advi": advi, "gsm": gsm, "bam": bam}
# Families each algorithm supports (GSM and BaM are implemented in their diagonal versions).
ALGORITHM_FAMILIES = {
    "score_prox": ("diag", "lowrank"),
    "advi": ("diag", "lowrank"),
    "gsm": ("diag",),
    "bam": ("diag",),
}
