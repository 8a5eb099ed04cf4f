"""Cached AR steps on the step graph (`converters.onnx_step`): a KV cache kept in preallocated buffers that
onnxruntime updates in place, so a step reads the cache once and copies nothing.

The backbone's cached step concatenates past and new keys into a fresh present tensor every step (at 800
positions that copy costs as much as a 4-bit weight read); here each layer's key and value live in one
buffer [1, heads, capacity, head_dim] bound as both the step graph's past input and present output, the new
position written at the sequence's length. Capacity doubles when full (one copy). Imports: numpy,
onnxruntime.
"""
from __future__ import annotations

import numpy as np

from valle_export import graphs

FIRST_FREE = 1024  # positions reserved past the prefill: 13 s of frames before the first regrowth


class StepCache:
    """One sequence's KV cache as step-graph buffers: `length` cached positions, room for `capacity`."""

    def __init__(self, past: list[np.ndarray], reserve: int = FIRST_FREE):
        """From a backbone cache (`past`: [1, heads, n, head_dim] per layer and kind, key then value)."""
        self.length = int(past[0].shape[2])
        self.buffers = [self._buffer(p, self.length + reserve) for p in past]
        self._values: list | None = None  # OrtValues over the buffers (made once per capacity)
        self.binding = None  # the step graph's IOBinding with the buffers bound (made once per capacity)
        self.binding_owner = None  # the runner that made it

    @staticmethod
    def _buffer(past: np.ndarray, capacity: int) -> np.ndarray:
        _, heads, n, dim = past.shape
        buf = np.zeros((1, heads, capacity, dim), dtype=np.float32)
        buf[:, :, :n] = past
        return buf

    @property
    def capacity(self) -> int:
        return self.buffers[0].shape[2]

    def as_past(self) -> list[np.ndarray]:
        """The cached positions in the backbone's layout (views; onnxruntime copies them contiguous)."""
        return [b[:, :, :self.length] for b in self.buffers]

    def ortvalues(self) -> list:
        """The buffers as OrtValues sharing their memory, grown first when the next step would not fit."""
        import onnxruntime as ort

        if self.length + 1 > self.capacity:
            self.buffers = [self._buffer(b[:, :, :self.length], 2 * self.capacity) for b in self.buffers]
            self._values = self.binding = None
        if self._values is None:
            self._values = [ort.OrtValue.ortvalue_from_numpy(b) for b in self.buffers]
        return self._values


class StepRunner:
    """Runs the step graph of one session on a `StepCache` (CPU)."""

    def __init__(self, session, n_layers: int, hidden_size: int):
        self.session = session
        self.names = [(graphs.past_name(i // 2, ("key", "value")[i % 2]),
                       graphs.present_name(i // 2, ("key", "value")[i % 2])) for i in range(2 * n_layers)]
        self.hidden = np.zeros((1, 1, hidden_size), dtype=np.float32)

    def step(self, cache: StepCache, embeds: np.ndarray, position: int) -> np.ndarray:
        """Final-norm hidden [1, d] of one new position (embedding sum `embeds` [d]) appended to `cache`.
        The cache buffers and the output stay bound from step to step; only the four small inputs change."""
        import onnxruntime as ort

        values = cache.ortvalues()
        binding = cache.binding
        if binding is None or cache.binding_owner is not self:
            binding = cache.binding = self.session.io_binding()
            cache.binding_owner = self
            for (past, present), value in zip(self.names, values):
                binding.bind_ortvalue_input(past, value)
                binding.bind_ortvalue_output(present, value)
            binding.bind_ortvalue_output("last_hidden_state", ort.OrtValue.ortvalue_from_numpy(self.hidden))
        binding.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds, dtype=np.float32).reshape(1, 1, -1))
        binding.bind_cpu_input("position_ids", np.array([[position]], dtype=np.int64))
        binding.bind_cpu_input("seqlens_k", np.array([cache.length], dtype=np.int32))
        binding.bind_cpu_input("total_sequence_length", np.array(cache.length + 1, dtype=np.int32))
        self.session.run_with_iobinding(binding)
        cache.length += 1
        return self.hidden[0].copy()
