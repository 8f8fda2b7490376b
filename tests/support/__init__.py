"""Test helpers shared by tests, benchmarks and the demo (never shipped in a wheel)."""
