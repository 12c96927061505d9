"""Compatibility shim: this module moved to :mod:`lora_pipeline.files` (``io`` shadowed the standard library).

Only ``lora_pipeline/data/sources.py``, ``stages/split.py`` and ``stages/validate.py`` still import it; once they
import ``lora_pipeline.files`` this file goes.
"""

from .files import *  # noqa: F401,F403
from .files import __all__  # noqa: F401
