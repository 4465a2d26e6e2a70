from .lti import lti_convolve, lti_kernel, lti_recurrence, zoh_discretize
from .ms_scan import MS_FULL_RES, MS_LOW_RES, direction_index_map, direction_merge, direction_scan
from .scan_orders import SCAN_ORDERS, cascade_merge, cascade_scan, cross_merge, cross_scan, scan_index_maps
from .selective_scan import (
    available_backends,
    linear_scan,
    register_backend,
    selective_scan,
    selective_scan_reference,
    selective_scan_torch,
)
from .flops import register_op_flops, register_scan_flops, selective_scan_macs
