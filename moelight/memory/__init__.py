"""Memory: the arithmetic plan of a recipe's per-rank bytes (plan.py), the check `moelight fit`
runs before building (fit_check.py), and a counter of live tensor bytes that validates the plan
on CPU (live_bytes.py)."""
