"""Text generation from trained checkpoints: the decoding loop (with a KV cache), sampling, stop
strings, and the chat session behind `moelight generate` and `moelight chat`."""
