"""Fills the generated part of docs/performance.md from a benchmark report:

    python -m ms_attention bench --json bench.json --png docs/performance.png
    python benchmarks/performance_doc.py bench.json [docs/performance.md]

Everything between the `<!-- bench:begin -->` and `<!-- bench:end -->` lines is replaced: the run's environment,
the machine limits, the result tables per section, the thread-settings table and the count of targets met.
"""
import json
import os
import sys

from ms_attention import bench_report

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
SECTIONS = [("decode", "Decode (incre_flash_attention, BNSD; of roof: see above)"),
            ("paged", "Paged decode (block_size 128) against contiguous"),
            ("latency", "Tiny decode per-call latency (PyNative)"),
            ("prefill", "Prefill (prompt_flash_attention, BNSD)"),
            ("training", "Training (flash_attention_score forward + backward, BNSD)"),
            ("memory", "Extra memory of a 16k-token prefill"),
            ("sparse", "sparse_flash_attention (selected-block decode)")]


def _value(v, spec):
    return "n/a" if v is None else format(v, spec)


def generated(report):
    env, settings = report["environment"], report["settings"]
    out = [f"Run {env['date_utc']} UTC, commit {env['commit']}: `{settings.get('command', '')}` "
           f"({settings['size']}; {report['duration_s']:.0f} s).", ""]
    out += ["| environment | |", "|---|---|"]
    for key in ("cpu", "cores", "cpus_of_process", "threads", "MS_ATTENTION_NUM_THREADS", "OPENBLAS_CORETYPE",
                "OMP_NUM_THREADS", "python", "mindspore", "numpy", "torch", "torch_threads", "library_variant"):
        out.append(f"| {key} | {env.get(key)} |")
    out.append(f"| library ISA | {' '.join(env.get('library_isa') or [])} |")
    out += ["", "| limit | start | end | used |", "|---|---|---|---|"]
    for key, label, spec in (("read_GBps", "read bandwidth, all threads (GB/s)", ".1f"),
                             ("fp32_fma_GFLOPs", "fp32 FMA peak (GFLOP/s)", ".0f"),
                             ("bf16_dot_GFLOPs", "bf16 vdpbf16ps peak (GFLOP/s)", ".0f"),
                             ("numpy_read_1thread_GBps", "np.sum, one thread (GB/s, reference)", ".1f"),
                             ("numpy_copy_1thread_GBps", "np.copyto, one thread (GB/s, reference)", ".1f")):
        out.append(f"| {label} | {_value(report['limits'].get(key), spec)} | "
                   f"{_value(report['limits_end'].get(key), spec)} | {_value(report['limits_used'].get(key), spec)} |")
    rows = report["rows"]
    for group, title in SECTIONS:
        chosen = [r for r in rows if r["group"] == group]
        if chosen:
            out += ["", f"**{title}**", "", bench_report.markdown_table(chosen)]
            notes = sorted({note for r in chosen for note in r.get("notes", [])})
            out += [""] + [f"- {note}" for note in notes] if notes else []
            if group == "latency":
                for r in chosen:
                    out += ["", f"Native ops, per call ({r['mode']}): " +
                            ", ".join(f"{k} {v:.3f} ms" for k, v in r["native_ops_ms"].items())]
            if group == "memory":
                r = chosen[0]
                out += ["", f"RSS before {r['rss_before_MB']:.0f} MB, peak {r['peak_MB']:.0f} MB, output "
                            f"{r['output_MB']:.0f} MB ({r['method']})."]
    if any(r["group"] == "threads" for r in rows):
        out += ["", "**Thread settings** (each in a fresh process)", "", bench_report.threads_table(rows)]
    summary = report["summary"]
    out += ["", f"Targets: {summary['met']} met, {summary['missed']} missed (the target column of each table; "
                f"`summary` in the JSON lists the missed rows)."]
    return "\n".join(out)


def main(report_path, doc_path):
    with open(report_path, encoding="utf-8") as f:
        report = json.load(f)
    with open(doc_path, encoding="utf-8") as f:
        doc = f.read()
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(doc_path, "w", encoding="utf-8") as f:
        f.write(head + BEGIN + "\n" + generated(report) + "\n" + END + tail)
    print(f"updated {doc_path}")


if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else os.path.join(root, "docs", "performance.md"))
