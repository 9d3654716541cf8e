"""Hugging Face MoE checkpoints in and out (`moelight convert`): one module per concern, one per architecture.
architecture -> {qwen2_moe, mixtral, olmoe, llama_moe} -> architectures -> name_table -> importer/exporter -> convert_dirs."""
