"""Evaluation through lm-evaluation-harness: the `moelight` LM adapter, tasks, reports.

Needs the optional extra `moelight[eval]` (lm-eval). Importing this package imports nothing
heavy; `moelight.eval.adapter` registers the adapter with lm-eval as model `moelight`.
"""
