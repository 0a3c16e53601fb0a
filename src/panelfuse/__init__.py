"""panelfuse: an open, self-hosted Fusion API."""

__version__ = "0.1.0"

from panelfuse.pipeline.result import FusionResult, MemberResult
from panelfuse.pipeline.run import Fusion, FusionError
from panelfuse.spec import FusionSpec, all_presets, spec_from_preset

__all__ = ["Fusion", "FusionError", "FusionResult", "FusionSpec", "MemberResult", "all_presets", "spec_from_preset"]
