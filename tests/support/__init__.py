"""Test support: the real control plane and helpers shared by the suites."""
