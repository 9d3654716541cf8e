"""The MoE transformer built from a recipe: layers, the MoE block wiring router and dispatcher, init weights.
Builds on the MoE contracts (`moelight.moe`) and the C2R lists a layer needs (`moelight.c2r`)."""
