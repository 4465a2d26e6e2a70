"""Analysis tools: parameters and FLOPs, effective receptive field, SS2D attention / activation maps, resolution
scaling. Each tool is a module with functions and a ``vssm`` sub-command."""
from .flops import FlopCount, count_flops, count_params, model_flops

__all__ = ["FlopCount", "count_flops", "count_params", "model_flops"]
