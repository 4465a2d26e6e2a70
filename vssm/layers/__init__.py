from .bimamba import BiMamba, RMSNorm, VimBlock, add_norm, causal_conv1d
from .common import (
    ConvBlock,
    DepthwiseConv2d,
    GatedMlp,
    LayerNorm2d,
    Linear2d,
    Mlp,
    PatchMerging2D,
    Permute,
    PointwiseConv2d,
    downsample_conv,
    downsample_v1,
    make_act,
    make_linear,
    make_norm,
    patch_embed_v1,
    patch_embed_v2,
)
from .ms2d import ConvFFN, MS2D, MS2DVariant, MSVSSBlock, SEModule, ms2d_variant
from .ss2d import SS2D, SS2DVariant, parse_forward_type
from .vss_block import VSSBlock
