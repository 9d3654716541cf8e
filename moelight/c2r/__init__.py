"""The C2R workflow: profile a model -> collaborator lists -> expert placement -> plots.
One module owns each file format (profile artifact, placement file), its reader and writer together."""
