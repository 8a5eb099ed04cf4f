"""The PyTorch reference: native checkpoint -> uniform-ID `LlamaForCausalLM` + layout, every pass exact.

This is the definition of "correct" that every backend is compared with (and which is itself checked
against the original implementation's recorded outputs in ../shared/fixtures). Imports torch.
"""
