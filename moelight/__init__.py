"""moelight: a Lightning trainer for Mixture-of-Experts LMs with C2R routing and group-local all2all."""

__version__ = "0.1.0"
