"""Click parameter types for every numeric and path option, defined once: each option is range-checked
when parsed, so a bad value is a usage error (one line, exit code 2) before any work starts.

Imports: click, stdlib (no torch).
"""
from __future__ import annotations

import math
from pathlib import Path

import click

MAX_SEED = 2**63 - 1  # numpy, torch and llama.cpp all take seeds up to here
MAX_THREADS = 1024
MAX_FRAMES = 75 * 60 * 5  # 5 minutes of EnCodec frames: the original's max_position_embeddings
MAX_DURATION_S = 300.0  # the same 5 minutes, in seconds
MIN_DURATION_S = 0.1  # below this no frame fits (75 frames/s), and the model would "stop" before starting
MAX_DEMASK_STEPS = 1000
MAX_N_CTX = 1 << 20
MAX_CODEBOOK_LEVELS = 16  # EnCodec 24 kHz at 12 kbps: the most codebooks the Vocos feature table holds
MAX_CONTEXT_PIECES = 1000
MAX_DRY_LENGTH = 50  # the original's DRY match length stops at max(allowed_length, 50)


class FiniteFloat(click.FloatRange):
    """A float in a range that is also finite (click's FloatRange lets NaN through every bound check and
    infinity through an open end)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


class OutputPath(click.Path):
    """An output path: never empty (click would turn '' into '.', the current folder)."""

    def __init__(self) -> None:
        super().__init__(path_type=Path, dir_okay=True, file_okay=True)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("the output path is empty.", param, ctx)
        return super().convert(value, param, ctx)


SEED = click.IntRange(0, MAX_SEED)
THREADS = click.IntRange(0, MAX_THREADS)
TOP_K = click.IntRange(0, None)
FRAMES = click.IntRange(1, MAX_FRAMES)
DEMASK_STEPS = click.IntRange(1, MAX_DEMASK_STEPS)
OPSET = click.IntRange(18, 23)
LANG_ID = click.IntRange(0, 255)
N_CTX = click.IntRange(16, MAX_N_CTX)
CODEBOOK_LEVELS = click.IntRange(1, MAX_CODEBOOK_LEVELS)
DURATION = FiniteFloat(MIN_DURATION_S, MAX_DURATION_S)
TEMPERATURE = FiniteFloat(0.0, None)
PROBABILITY = FiniteFloat(0.0, 1.0)
NON_NEGATIVE = FiniteFloat(0.0, None)
PENALTY = FiniteFloat(0.0, None, min_open=True)
FINITE = FiniteFloat(None, None)
PROMPT_SECONDS = FiniteFloat(0.0, MAX_DURATION_S)  # 0 = the whole clip
CONTEXT_PIECES = click.IntRange(0, MAX_CONTEXT_PIECES)
DRY_LENGTH = click.IntRange(1, MAX_DRY_LENGTH)
OUTPUT = OutputPath()
