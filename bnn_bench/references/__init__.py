"""Reference posterior predictives shipped with bnn-bench (`reference=NAME`); see
docs/results/fidelity.md for how each was made."""
