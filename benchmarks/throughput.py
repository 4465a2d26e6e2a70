"""Throughput / memory of vssm and timm models side by side (the paper's protocol); see vssm/benchmark.py.

    PYTHONPATH=. python benchmarks/throughput.py --models vmamba_tiny_s1l8 swin_tiny_patch4_window7_224 convnext_tiny \
        --json out.json [--compile]
"""
import argparse
import sys

from vssm import benchmark

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benchmark.add_arguments(parser)
    sys.exit(benchmark.main(parser.parse_args()))
