"""The benchmark suite of `make bench`: see bench/run.py."""
