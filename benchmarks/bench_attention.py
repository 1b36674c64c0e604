"""Run: python benchmarks/bench_attention.py [--quick | --smoke] [--only decode,prefill,...] [--json PATH]
[--png PATH] [--lock PATH] [--no-torch]

The same as `python -m ms_attention bench`: the operators through the public MindSpore API as fractions of this
machine's limits measured in the same run, against torch SDPA and MindSpore's composed attention
(docs/performance.md).
"""
import argparse
import sys

from ms_attention import bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="benchmarks/bench_attention.py")
    bench.add_arguments(parser)
    bench.main(parser.parse_args(sys.argv[1:]))
