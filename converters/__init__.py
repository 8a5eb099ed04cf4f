"""Exporters: uniform model -> ONNX graphs, GGUF files, EnCodec graphs and weight files. Each export is
checked and verified against the reference before success is reported."""
