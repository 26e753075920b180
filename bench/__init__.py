"""Benchmarks: bench/inference.py (inference speed, memory and accuracy of each path)."""
