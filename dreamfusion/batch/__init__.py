"""Many prompts on Ray: ``python -m dreamfusion batch PROMPTS.txt [--config NAME] [key=value ...]
[--address auto|HOST:PORT] [--max-parallel N] [--cpus-per-worker N]`` (``pip install "dreamfusion[ray]"``).

Without --address a local Ray instance is started; with one the batch joins that cluster. Each Ray actor
keeps the guidance model loaded and runs prompt after prompt (one GPU per actor on CUDA, --cpus-per-worker
cores per actor on CPU). See driver.py for the batch folder; the command line is dreamfusion/cli.
"""

from __future__ import annotations

from .driver import plan, run_batch
from .prompts import PromptLine, read_prompts

__all__ = ["run_batch", "plan", "read_prompts", "PromptLine"]
