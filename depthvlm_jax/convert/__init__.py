"""Hugging Face import/export: a key table with per-tensor hooks, config translation, safetensors I/O."""
