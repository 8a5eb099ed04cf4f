"""Torch-free runtimes: backends with the pass API, samplers, and the AR+NAR / NAR-len pipeline.

May import valle_export, numpy, onnxruntime, llama_cpp, gguf; never torch or transformers.
"""
