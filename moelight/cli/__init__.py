"""The `moelight` command line: one module per verb (`fit`, `profile`, `convert`, `bench`, `eval`, `plugins`).
Verbs import their heavy dependencies when they run, so `moelight --help` stays fast."""
