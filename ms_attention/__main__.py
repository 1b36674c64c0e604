"""python -m ms_attention demo | bench | check"""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ms_attention")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="Graph mode: prefill and decode over a paged KV cache, then a training "
                                       "step and loop, each checked")
    demo.add_argument("--steps", type=int, default=48)
    bench = sub.add_parser("bench", help="the operators against this machine's limits, torch SDPA and MindSpore's "
                                         "composed attention (docs/performance.md)")
    from ms_attention import bench as bench_module
    bench_module.add_arguments(bench)
    sub.add_parser("check", help="which kernels serve each operator on this machine")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from ms_attention import demo as demo_module
        return 0 if demo_module.run(steps=args.steps) else 1
    if args.command == "bench":
        bench_module.main(args)
        return 0
    from ms_attention import backends, opdef
    from ms_attention.kernels.cpu import loader
    lib = loader.library()
    print(f"native library: {lib.path + ' (' + lib.variant + ', ' + ' '.join(lib.isa) + ')' if lib else None}")
    for name in opdef.names():
        choice = backends.select(name)
        print(f"{name:34s} {choice.backend:10s} {'; '.join(choice.reasons)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
