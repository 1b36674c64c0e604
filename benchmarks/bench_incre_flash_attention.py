"""Run: python benchmarks/bench_incre_flash_attention.py [--quick] [--json out.json]

The same as `python -m ms_attention bench`; reports kernel throughput as ratios of limits measured in this run.
"""
import argparse
import json

from ms_attention import bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    report = bench.main(quick=args.quick)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
