"""The ``make bench`` harness: throughput, CPU and memory of each step against simple baselines."""
