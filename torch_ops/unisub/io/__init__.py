"""Checkpoint readers: safetensors (own parser, memory-mapped), PEFT adapters, torch state dicts."""
from .atomic import atomic_path, ensure_writable_dir, write_json
from .checkpoints import (Checkpoint, PeftAdapter, SafetensorsCheckpoint, TorchCheckpoint, discover,
                          lora_pairs, open_checkpoint)
from .errors import CheckpointError, WriteError
from .safetensors import SafetensorsFile, load_file, read_header, save_file
from .slots import DEFAULT_MAX_GRAM_BYTES, matches, matrix_shape, plan, select

__all__ = ["Checkpoint", "CheckpointError", "PeftAdapter", "SafetensorsCheckpoint", "SafetensorsFile",
           "TorchCheckpoint", "atomic_path", "discover", "ensure_writable_dir", "load_file", "lora_pairs", "matches",
           "matrix_shape", "open_checkpoint", "plan", "DEFAULT_MAX_GRAM_BYTES", "read_header", "save_file", "select",
           "write_json", "WriteError"]
