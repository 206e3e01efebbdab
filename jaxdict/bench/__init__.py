"""Throughput benchmarks (commands, never timed tests): loader, train step, harvester."""
