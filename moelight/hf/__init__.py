"""Hugging Face MoE checkpoints in and out (`moelight convert`).

`common.py` holds the converter (reading config.json + safetensors, the shared name table,
writing the hub layout); `qwen2_moe.py`, `mixtral.py`, `olmoe.py` and `llama_moe.py` hold what
differs per architecture; `tiny.py` builds tiny random checkpoints and a chat tokenizer locally.
"""
