"""`python -m bnn_bench` is `bnn-bench`."""

from bnn_bench.run import main

main()
