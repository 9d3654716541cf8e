"""A run's record (history.csv, summary.json), its plots, and `moelight report`."""
