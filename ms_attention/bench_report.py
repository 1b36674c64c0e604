"""The benchmark's report: targets judged per row, the final table (text and markdown), and the chart."""


def judge(row):
    """(met: True / False / None when the row has no target or lacks a figure, text) for the issue's targets."""
    group = row["group"]
    if group == "decode":
        need, got = row["target_value"], row.get("of_limit")
        if got is None:
            return None, "n/a (no read bw)"
        if got >= need:
            return True, "met"
        roof = f", roof {row['of_roof']:.2f}" if row.get("of_roof") is not None else ""
        return False, f"missed by {need - got:.2f} ({got:.2f} < {need:.2f} x read bw{roof})"
    if group in ("paged", "latency"):
        key = "time_over_contiguous" if group == "paged" else "time_over_native_op"
        got, need = row[key], row["target_value"]
        return (True, "met") if got <= need else (False, f"missed by {got / need - 1:.0%} ({got:.2f} > {need:.2f})")
    if group == "prefill":
        from ms_attention.bench_prefill import PEAK_TARGET, TORCH_TARGET
        misses = []
        if row.get("of_limit") is not None and row["of_limit"] < PEAK_TARGET:
            misses.append(f"peak {row['of_limit']:.2f} < {PEAK_TARGET:.2f}")
        if row.get("speedup_vs_torch") is not None and row["speedup_vs_torch"] < TORCH_TARGET:
            misses.append(f"torch {row['speedup_vs_torch']:.2f} < {TORCH_TARGET:.1f}x")
        if row.get("of_limit") is None and row.get("speedup_vs_torch") is None:
            return None, "n/a"
        note = "" if row.get("speedup_vs_torch") is not None else " (no torch)"
        return (True, "met" + note) if not misses else (False, "missed: " + ", ".join(misses) + note)
    if group == "training" and row.get("what") == "forward+backward":
        from ms_attention.bench_training import TORCH_TARGET
        got = row.get("speedup_vs_torch")
        if got is None:
            return None, "n/a (no torch)"
        if got >= TORCH_TARGET:
            return True, "met"
        return False, f"missed by {TORCH_TARGET - got:.2f} ({got:.2f}x torch)"
    if group == "memory":
        got, need = row["value"], row["target_value"]
        return (True, "met") if got < need else (False, f"missed by {got - need:.1f} MB ({got:.1f} MB)")
    return None, ""


def _fmt(value, spec, suffix=""):
    return "n/a" if value is None else format(value, spec) + suffix


COLUMNS = ["case", "mode", "ms", "rate", "of limit", "of roof", "vs torch", "vs ms fp16", "vs ms fp32", "target"]


def table_rows(rows):
    """The table's cells per row (strings)."""
    cells = []
    for row in rows:
        _, verdict = judge(row)
        rate = "" if row.get("value") is None or row.get("unit") is None else f"{row['value']:.1f} {row['unit']}"
        of_limit = "" if row.get("of_limit") is None else f"{row['of_limit']:.2f} {row['limit']}"
        if row["group"] == "paged":
            of_limit += f"; {row['time_over_contiguous']:.2f} x contiguous time"
        if row["group"] == "latency":
            rate = f"{row['native_op']} {row['native_op_ms']:.3f} ms"
            of_limit = f"{row['time_over_native_op']:.2f} x its time"
        comparable = row["group"] in ("decode", "prefill", "training")
        alt = (lambda key: _fmt(row.get(key), ".2f", "x")) if comparable else (lambda key: "")
        cells.append([row["case"], row["mode"], _fmt(row.get("ms"), ".2f"), rate, of_limit,
                      _fmt(row.get("of_roof"), ".2f") if row["group"] == "decode" else "",
                      alt("speedup_vs_torch"), alt("speedup_vs_ms_fp16"), alt("speedup_vs_ms_fp32"), verdict])
    return cells


def text_table(rows):
    cells = [COLUMNS] + table_rows(rows)
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def markdown_table(rows):
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(line) + " |" for line in table_rows(rows)]
    return "\n".join(lines)


def threads_table(rows):
    """Markdown: per thread-setting row, the prefill and decode times and rates for each pool size."""
    rows = [r for r in rows if r["group"] == "threads"]
    counts = sorted({r["threads"] for r in rows})
    cases = list(dict.fromkeys(r["case"].split(" ", 1)[1] for r in rows))
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    header = ["case", "setting"] + [f"MS_ATTENTION_NUM_THREADS={t}" for t in counts]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for case in cases:
        for setting in settings:
            cells = [case, setting]
            for t in counts:
                match = [r for r in rows if r["threads"] == t and r["setting"] == setting and r["case"].endswith(case)]
                cells.append(f"{match[0]['ms']:.1f} ms ({match[0]['value']:.1f} {match[0]['unit']})" if match else "")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rows):
    """Counts of targets met and missed, and the missed rows' verdicts."""
    met, missed = 0, []
    for row in rows:
        ok, verdict = judge(row)
        if ok is True:
            met += 1
        elif ok is False:
            missed.append(f"{row['case']} [{row['mode']}]: {verdict}")
    return {"met": met, "missed": len(missed), "missed_rows": missed}


def draw(report, path):
    """Two panels: each case's fraction of its machine limit (bars; the targets as ticks), and the speedup over
    torch SDPA (log scale; 1 = as fast)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    limited = [r for r in rows if r.get("of_limit") is not None and r["group"] in ("decode", "prefill", "training",
                                                                                       "sparse")]
    versus = [r for r in rows if r.get("speedup_vs_torch") is not None]
    height = max(4.0, 0.22 * max(len(limited), len(versus), 1) + 1.5)
    fig, (left, right) = plt.subplots(1, 2, figsize=(16, height))
    colors = {"decode": "tab:blue", "prefill": "tab:orange", "training": "tab:green", "sparse": "tab:purple"}
    label = lambda r: f"{r['case'].replace('sparse_flash_attention', 'sparse')} [{r['mode']}]"  # noqa: E731
    labels = [label(r) for r in limited]
    left.barh(range(len(limited)), [r["of_limit"] for r in limited], color=[colors[r["group"]] for r in limited])
    for i, r in enumerate(limited):
        need = r.get("target_value") if r["group"] == "decode" else (0.5 if r["group"] == "prefill" else None)
        if need:
            left.plot([need, need], [i - 0.4, i + 0.4], color="black", linewidth=1.5)
    left.set_yticks(range(len(limited)), labels, fontsize=7)
    left.invert_yaxis()
    left.set_xlabel("fraction of the machine limit (decode: read bw; prefill/training/sparse: fp32 FMA peak); "
                    "| = target", fontsize=8)
    left.axvline(1.0, color="gray", linestyle=":")
    if versus:
        right.barh(range(len(versus)), [r["speedup_vs_torch"] for r in versus],
                   color=[colors.get(r["group"], "gray") for r in versus])
        right.set_yticks(range(len(versus)), [label(r) for r in versus], fontsize=7)
        right.set_xscale("log")
        right.axvline(1.0, color="black", linewidth=1)
        right.invert_yaxis()
        right.set_xlabel("speedup over torch SDPA (its time / ours; > 1: ours faster)", fontsize=8)
    else:
        right.text(0.5, 0.5, "torch not installed: no comparison", ha="center", va="center")
        right.set_axis_off()
    env = report["environment"]
    limits = report["limits_used"]
    fig.suptitle(f"ms_attention bench ({report['settings']['size']}) on {env['cpu']}, {env['threads']} threads; "
                 f"read {_fmt(limits.get('read_GBps'), '.1f')} GB/s, "
                 f"fp32 FMA {_fmt(limits.get('fp32_fma_GFLOPs'), '.0f')} GFLOP/s, "
                 f"bf16 dot {_fmt(limits.get('bf16_dot_GFLOPs'), '.0f')} GFLOP/s", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
