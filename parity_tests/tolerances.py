"""The tolerances of the parity tests: the product's contracts (valle_export.contracts), named once there.
Relative = max |got - want| / max |want|."""
from valle_export.contracts import CACHE_VS_RECOMPUTE_REL, LOGITS_REL_EXACT as LOGITS_REL_FP32  # noqa: F401
