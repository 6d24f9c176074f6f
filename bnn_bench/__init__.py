"""bnn-bench: run, compare and reproduce Bayesian neural network inference."""

__version__ = "0.1.0"
