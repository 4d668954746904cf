"""Benchmarks: each compares crosslayer with a named peer in the same run."""
