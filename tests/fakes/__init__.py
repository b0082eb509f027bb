"""Real loopback stand-ins for external systems, used by tests and benchmarks."""
