"""valle-export: exact export and portable runtimes for VALL-E (e-c-k-e-r/vall-e) checkpoints.

This package is the torch-free core: names, config parsing, the uniform-ID layout, sequence assembly,
file helpers and the CLI. It must never import torch or transformers at module level.
"""

__version__ = "0.1.0"
