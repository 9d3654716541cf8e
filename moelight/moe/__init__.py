"""The MoE contracts: router (`Routing`, losses, gates, expert bias), dispatcher, expert weights, layer context.
Plugins reach them only through `moelight.api`; the rest of moelight builds on them."""
