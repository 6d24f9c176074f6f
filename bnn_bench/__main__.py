"""`python -m bnn_bench` is `bnn-bench`."""

from bnn_bench.cli import main

main()
