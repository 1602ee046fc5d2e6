"""Exporting adapters and merged models for the runtimes CPU users run: GGUF for llama.cpp, Ollama
and LM Studio.

- :func:`export_gguf_lora`: a LoRA adapter as a GGUF LoRA file (``llama-cli -m BASE.gguf --lora
  OUT.gguf``).
- :func:`export_gguf`: a model with its adapters merged, as a GGUF model file with its tokenizer and
  chat template, plus an Ollama ``Modelfile``.

Both support the architectures in :data:`GGUF_ARCHITECTURES` (the Llama family).
"""

from .architectures import GGUF_ARCHITECTURES
from .gguf_file import ENCODINGS
from .gguf_lora import export_gguf_lora
from .gguf_model import export_gguf
from .ollama import write_modelfile

__all__ = ["ENCODINGS", "GGUF_ARCHITECTURES", "export_gguf", "export_gguf_lora", "write_modelfile"]
