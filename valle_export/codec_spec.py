"""EnCodec 24 kHz as VALL-E uses it, in one frozen spec: every module that needs a rate, a hop, a codebook
count or a bandwidth reads it here, exporters write it into codec metadata, and the runtime reads it back from
that metadata (refusing a graph that lacks it rather than assuming). Imports: stdlib.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class EncodecSpec:
    sample_rate: int = 24000
    hop: int = 320  # samples per frame (8 * 5 * 4 * 2)
    codebooks: int = 8  # 6 kbps
    bins: int = 1024  # codes per codebook
    bandwidth_kbps: float = 6.0

    @property
    def frame_rate(self) -> int:
        return self.sample_rate // self.hop  # 75

    def metadata(self) -> dict:
        """The keys every codec graph carries (the runtime requires them)."""
        return {"sample_rate": self.sample_rate, "frame_rate": self.frame_rate, "codebooks": self.codebooks,
                "bandwidth_kbps": self.bandwidth_kbps, "hop": self.hop}


ENCODEC = EncodecSpec()
REQUIRED_METADATA = ("sample_rate", "frame_rate", "codebooks", "hop")
