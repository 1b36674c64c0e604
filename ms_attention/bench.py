"""`python -m ms_attention bench`: the attention operators through the public MindSpore API as fractions of this
machine's limits measured in the same run, and against torch SDPA (when importable) and MindSpore's composed-ops
attention on the same inputs. docs/performance.md says what is measured and how.

Groups (--only): decode (incre_flash_attention contiguous and paged), latency (a tiny PyNative decode against a
native MindSpore op), prefill (prompt_flash_attention), training (flash_attention_score forward + backward),
memory (extra memory of a 16k-token prefill), sparse (sparse_flash_attention), threads (MindSpore's execution
mode and the pool size, each in a fresh process).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import mindspore as ms

from ms_attention import (bench_decode, bench_memory, bench_prefill, bench_report, bench_sparse, bench_threads,
                          bench_training, machine)
from ms_attention.bench_common import Settings, timing_lock, use_lock
from ms_attention.bench_compare import torch_module
from ms_attention.kernels.cpu import loader

GROUPS = {"decode": bench_decode.run, "latency": bench_decode.latency,
          "prefill": bench_prefill.run, "training": bench_training.run, "memory": bench_memory.run,
          "sparse": bench_sparse.run, "threads": bench_threads.run}


def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _commit():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        return subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(torch):
    lib = loader.library()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import matplotlib
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "cpus_of_process": cpus, "threads": machine.num_threads(),
            "MS_ATTENTION_NUM_THREADS": os.environ.get("MS_ATTENTION_NUM_THREADS"),
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "python": platform.python_version(), "mindspore": ms.__version__, "numpy": np.__version__,
            "torch": torch.__version__ if torch is not None else None,
            "torch_threads": torch.get_num_threads() if torch is not None else None,
            "matplotlib": matplotlib.__version__,
            "library_variant": lib.variant if lib else None, "library_isa": list(lib.isa) if lib else [],
            "library_path": lib.path if lib else None, "commit": _commit(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}


def measure_limits(size):
    megabytes = {"full": 1024, "quick": 512, "smoke": 64}[size]
    with timing_lock():
        return machine.limits(megabytes=megabytes, repeats=3 if size == "smoke" else 5,
                          seconds=0.05 if size == "smoke" else 0.2)


def _print_limits(limits, label):
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    print(f"machine limits ({label}, {limits['threads']} threads): read {fmt(limits['read_GBps'], '.1f')} GB/s "
          f"(kernel library, all threads), fp32 FMA {fmt(limits['fp32_fma_GFLOPs'], '.0f')} GFLOP/s, bf16 dot "
          f"{fmt(limits['bf16_dot_GFLOPs'], '.0f')} GFLOP/s; reference: np.sum one thread "
          f"{limits['numpy_read_1thread_GBps']:.1f} GB/s, np.copyto {limits['numpy_copy_1thread_GBps']:.1f} GB/s",
          flush=True)


def best_limits(start, end):
    """The limits the fractions use: the better of the start and end measurement of each (a limit is a maximum
    the machine can reach; on a shared machine one of the two may have been slowed by other processes)."""
    best = dict(start)
    for key, value in end.items():
        if isinstance(value, float) and (best.get(key) is None or value > best[key]):
            best[key] = value
    return best


def apply_limits(rows, limits):
    """(Re)computes every row's fractions of the machine limits from its rate."""
    read, fma, bf16 = limits.get("read_GBps"), limits.get("fp32_fma_GFLOPs"), limits.get("bf16_dot_GFLOPs")
    for row in rows:
        if row.get("value") is None:
            continue
        if row.get("limit") == "read bw":
            row["of_limit"] = row["value"] / read if read else None
        elif row.get("limit") == "fp32 FMA peak":
            row["of_limit"] = row["value"] / fma if fma else None
        if row["group"] == "decode":
            row["of_read_bw"] = row["of_limit"]  # the target; of_roof beside it (contract decision 2)
            shape = row["shape"]
            roof = bench_decode.roof_gbps(limits, shape["kv"], shape["N"] // shape["kvN"])
            row["roof_GBps"], row["of_roof"] = roof, row["value"] / roof if roof else None
        if row.get("of_bf16_peak") is not None:
            row["of_bf16_peak"] = row["value"] / bf16 if bf16 else None
        if row["group"] == "sparse":
            row["of_read_bw"] = row["selected_GBps"] / read if read else None


def run(size="full", groups=None, use_torch=True):
    """Runs the selected groups; returns the report (environment, limits at the start and end, rows, summary)."""
    started = time.perf_counter()
    groups = list(groups or GROUPS)
    torch = torch_module() if use_torch else None
    ms.set_context(mode=ms.PYNATIVE_MODE)
    limits = measure_limits(size)
    if torch is not None:
        torch.set_num_threads(limits["threads"] or 1)
    env = environment(torch)
    print("environment:", json.dumps(env), flush=True)
    _print_limits(limits, "start")
    settings = Settings(size, limits, torch)
    rows, group_seconds = [], {}
    for group in groups:
        print(f"[{group}]", flush=True)
        group_started = time.perf_counter()
        rows += GROUPS[group](settings)
        group_seconds[group] = time.perf_counter() - group_started
    limits_end = measure_limits(size)
    _print_limits(limits_end, "end")
    used = best_limits(limits, limits_end)
    _print_limits(used, "used for the fractions: the better of start and end")
    apply_limits(rows, used)
    for row in rows:
        row["target_met"], row["target_verdict"] = bench_report.judge(row)
    report = {"environment": env, "settings": {"size": size, "groups": groups, "repeats": settings.repeats,
                                               "budget_s": settings.budget_s},
              "limits": limits, "limits_end": limits_end, "limits_used": used, "rows": rows,
              "summary": bench_report.summary(rows),
              "duration_s": time.perf_counter() - started, "group_seconds": group_seconds}
    print()
    print(bench_report.text_table(rows))
    summary = report["summary"]
    print(f"\ntargets: {summary['met']} met, {summary['missed']} missed; {report['duration_s']:.0f} s", flush=True)
    return report


def add_arguments(parser):
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer shapes and repeats (about a minute or two)")
    size.add_argument("--smoke", action="store_true", help="tiny shapes that only check the harness (numbers "
                                                           "meaningless)")
    parser.add_argument("--only", help=f"comma-separated groups: {','.join(GROUPS)} (default: all)")
    parser.add_argument("--json", help="write the report (environment, limits, rows) to this path")
    parser.add_argument("--png", help="draw the chart (matplotlib) to this path")
    parser.add_argument("--lock", metavar="PATH", help="take this file lock (flock) around each timed section, so "
                        "other timing runs on the machine take turns with this one (do not also wrap the command "
                        "in flock on the same file)")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch comparison even if importable")


def main(args):
    groups = None
    if args.only:
        groups = [g.strip() for g in args.only.split(",") if g.strip()]
        unknown = [g for g in groups if g not in GROUPS]
        if unknown:
            raise SystemExit(f"unknown group(s) {unknown}; choose from {list(GROUPS)}")
    use_lock(args.lock)
    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    report = run(size, groups, use_torch=not args.no_torch)
    report["settings"]["command"] = " ".join(
        ["python -m ms_attention bench"] + (["--" + size] if size != "full" else []) +
        (["--only", args.only] if args.only else []) + (["--no-torch"] if args.no_torch else []) +
        (["--lock", args.lock] if args.lock else []) + (["--json", args.json] if args.json else []) +
        (["--png", args.png] if args.png else []))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, default=float)
        print(f"wrote {args.json}")
    if args.png:
        bench_report.draw(report, args.png)
        print(f"wrote {args.png}")
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m ms_attention.bench")
    add_arguments(parser)
    main(parser.parse_args(sys.argv[1:]))
