"""Analysis tools: parameters and FLOPs, effective receptive field, SS2D attention / activation maps, resolution
scaling. Each tool is a module with functions and a ``vssm`` sub-command (flops, erf, attnmap, scale)."""
from .attnmap import capture_scans, direction_maps, pixel_matrix, rollout, scan_matrix, scan_matrix_rows
from .erf import area_ratios, effective_receptive_field, normalize_erf, plot_erfs
from .flops import FlopCount, count_flops, count_params, model_flops
from .scale import plot_scaling, scale_table

__all__ = [
    "FlopCount",
    "area_ratios",
    "capture_scans",
    "count_flops",
    "count_params",
    "direction_maps",
    "effective_receptive_field",
    "model_flops",
    "normalize_erf",
    "pixel_matrix",
    "plot_erfs",
    "plot_scaling",
    "rollout",
    "scale_table",
    "scan_matrix",
    "scan_matrix_rows",
]
