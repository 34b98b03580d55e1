"""The command line: `sparsenet {fetch,train,study,report,plan}` (also `python -m sparsenet`).

Heavy modules are imported inside each command, so `sparsenet --help` is instant.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import signal
import sys
import threading
from pathlib import Path


def _sparsity(text: str) -> float:
    """A sparsity as a fraction (0.9), a whole percentage (90) or a percentage with a sign (97.5%)."""
    raw = text.strip()
    percent = raw.endswith("%")
    try:
        value = float(raw.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"sparsity must be a finite number: a fraction in [0, 1) or a "
                                         f"percentage in [0, 100), got {text!r}")
    if not percent and value >= 1:
        if not value.is_integer() or (value == 1 and not raw.isdigit()):      # 1.5, or 1.0: a fraction?
            raise argparse.ArgumentTypeError(
                f"ambiguous sparsity {text!r}: give a fraction in [0, 1) or a percentage such as {text}%")
        percent = True
    if percent:
        value /= 100.0
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"sparsity must be in [0, 1) (or 0-99%), got {text!r}")
    return value


def _ints(text: str) -> tuple:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> tuple:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _sparsities(text: str) -> tuple:
    return tuple(_sparsity(v) for v in text.split(",") if v.strip())


# an option given as its word for "unset" (--epochs default): the StudyConfig field becomes None
UNSET = type("Unset", (), {"__repr__": lambda self: "UNSET"})()


def _or_unset(parse, word: str):
    """`parse`, but the text `word` gives UNSET (a None field, which an omitted option cannot give)."""
    def convert(text):
        return UNSET if text.strip() == word else parse(text)
    convert.__name__ = parse.__name__      # argparse names the type in "invalid int value" messages
    return convert


# how the text of a `sparsenet study` option parses, by study_config.Option.kind
KINDS = {"str": str, "int": int, "float": float, "ints": _ints, "names": _names, "sparsities": _sparsities,
         "dataset": str}


def _add_study_options(p):
    """One option per StudyConfig field (study_config.OPTIONS), so the report's reproduce command
    (report.reproduce_command) gives back the exact configuration."""
    from sparsenet import names
    from sparsenet.study_config import OPTIONS

    for opt in OPTIONS:
        kw = {"dest": opt.field, "help": opt.help}
        if opt.kind == "bool":
            p.add_argument(opt.flag, action=argparse.BooleanOptionalAction, default=None, **kw)
            continue
        parse = KINDS[opt.kind]
        if opt.unset is not None:
            parse = _or_unset(parse, opt.unset)
        if opt.kind == "dataset":
            kw["choices"] = names.DATASETS
        p.add_argument(opt.flag, type=parse, **kw)


def _add_data_args(p):
    from sparsenet.names import DATASETS

    p.add_argument("--dataset", default="mnist", choices=DATASETS)
    p.add_argument("--data-dir", help="folder holding the four IDX files (else $SPARSENET_DATA_DIR, "
                                       "the cache, a download, then the offline copies)")
    p.add_argument("--cache-dir", help="data cache (default: ~/.cache/sparsenet)")


def _load_data(args):
    from sparsenet import data

    return data.load(args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir)


def cmd_fetch(args) -> int:
    ds = _load_data(args)
    print(f"{ds.name}: {len(ds.train_images)} training and {len(ds.test_images)} test images "
          f"from {ds.source}")
    return 0


def _train_config(args, **fixed):
    from sparsenet.train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    return TrainConfig(**{**given, **fixed})


def cmd_train(args) -> int:
    from sparsenet import checkpoint, train
    from sparsenet.files import check_writable

    # the settings (a negative --seed, --sizes of one width) are checked before the data is loaded and
    # the output folder made; --val, which needs the data's size, after
    cfg = _train_config(args, n_val=0)
    # checked before training, whose result would otherwise be lost to a bad path
    out = check_writable(args.out or f"models/{args.dataset}-seed{cfg.seed}.npz")
    ds = _load_data(args)
    n = len(ds.train_images)
    if args.n_val is None:
        args.n_val = train.default_n_val(n)
    train.check_n_val(args.n_val, n, flag="--val")
    cfg = dataclasses.replace(cfg, n_val=args.n_val)
    params, meta = train.train(ds, cfg, progress=not args.quiet)
    checkpoint.save(out, params, meta)
    print(f"test accuracy {meta['test_acc']:.4f}, test loss {meta['test_loss']:.4f}; saved {out}")
    return 0


def study_options(args) -> dict:
    """The StudyConfig fields given as `sparsenet study` options, {field: value} (omitted ones left out)."""
    from sparsenet.study_config import QUICK_FIELD, StudyConfig

    fields = {f.name for f in dataclasses.fields(StudyConfig)} - {QUICK_FIELD}
    return {k: None if v is UNSET else v for k, v in vars(args).items() if k in fields and v is not None}


def study_config(args):
    """The StudyConfig of parsed `sparsenet study` arguments (omitted options keep the defaults)."""
    from sparsenet.study_config import StudyConfig

    overrides = study_options(args)
    return StudyConfig.quick(**overrides) if args.quick else StudyConfig(**overrides)


def cmd_study(args) -> int:
    from sparsenet import study

    if args.timing_only:
        if args.quick:
            raise ValueError("--quick cannot be given with --timing-only (the folder's config.json says "
                             "whether its study is quick)")
        from sparsenet.files import named_folder     # `--timing-only .`: the sibling's name is made from the run id
        study.run_timing_only(str(named_folder(args.timing_only)), study_options(args), progress=not args.quiet)
        return 0
    study.run_study(study_config(args), progress=not args.quiet, accuracy_only=args.accuracy_only)
    return 0


def cmd_report(args) -> int:
    from sparsenet import report

    check_results_folder(args.results)
    path = report.build_report(args.results, threads=args.threads)
    print(f"report written to {path}")
    return 0


def check_results_folder(folder) -> None:
    """ValueError when `folder` holds none of a results folder's parts (a mistyped path such as
    `results` for `results/<run id>` would get an all-"Unknown" report written into it), naming the
    run folders inside it when it has some; a missing folder or a file are left to load_results (the
    report's), which names them. Reads no file."""
    from sparsenet.results import PARTS, has_parts

    folder = Path(folder)
    if not folder.is_dir() or has_parts(folder):
        return
    runs = sorted(str(p) for p in folder.iterdir() if p.is_dir() and has_parts(p))
    where = f"; the run folders in it: {', '.join(runs)}" if runs else ""
    raise ValueError(f"{folder} holds none of a results folder's files ({', '.join(f'{q}.json' for q in PARTS)})"
                     f"{where}; give the run folder a `sparsenet study` wrote, e.g. results/<run id>")


def plan_net(args):
    """(params, description) of `sparsenet plan`: the checkpoint's net or a He-initialised default one,
    pruned to --sparsity by the engine's method (names.ENGINE_METHOD) unless --method says otherwise."""
    from sparsenet import checkpoint, names
    from sparsenet.grid import pruned
    from sparsenet.model import he_init, layer_sizes

    if args.checkpoint:
        params, _meta = checkpoint.load(args.checkpoint)
        source = str(args.checkpoint)
    else:
        params, source = he_init(seed=0), "He-initialised default net (seed 0)"
    method = args.method or names.method_of(args.engine)
    net = pruned(params, method, args.sparsity)
    n_weights = sum(layer.weight.size for layer in net)
    nnz = sum(int((layer.weight != 0).sum()) for layer in net)
    return net, {"source": source, "layer_sizes": list(layer_sizes(net)), "method": method,
                 "sparsity": args.sparsity, "nnz": nnz, "n_weights": n_weights}


def cmd_plan(args) -> int:
    import json

    from sparsenet import plan
    from sparsenet.engines import make_engine
    from sparsenet.threads import check_threads, max_threads

    threads = args.threads or tuple(sorted({1, max_threads()}))
    for t in threads:
        check_threads(t, "--threads")
    if not args.batch or min(args.batch) < 1:
        raise ValueError(f"--batch: batch sizes must be positive integers, e.g. 1,16,256; got "
                         f"{','.join(map(str, args.batch)) or 'none'}")
    net, about = plan_net(args)
    target = plan.cpu()
    plans = []
    for t in threads:
        engine = make_engine(args.engine, net, threads=t)
        plans += [engine.plan(b) for b in args.batch]
    if args.json:
        print(json.dumps({"net": about, "cpu": {"name": target.name, "machine": target.machine, "isa": target.isa,
                                                "avx512f": target.avx512f, "avx2": target.avx2, "fma": target.fma,
                                                "l1d_bytes": plan.l1d_bytes(), "panel_bytes": plan.panel_bytes(),
                                                "l2_bytes": plan.l2_bytes()},
                          "plans": [p.to_dict() for p in plans]}, indent=2))
        return 0
    print(f"net: {about['source']}, layers {'-'.join(map(str, about['layer_sizes']))}, {about['method']}-pruned "
          f"to k={100 * about['sparsity']:g}% ({about['nnz']} of {about['n_weights']} weights kept)")
    l1d, l2 = plan.l1d_bytes(), plan.l2_bytes()
    print(f"CPU: Numba target {target.name} ({target.machine}), kernels for {target.isa}"
          f" (avx512f={target.avx512f}, avx2={target.avx2}, fma={target.fma}); L1d "
          f"{f'{l1d // 1024} KB' if l1d else 'unknown'}: column panels of {plan.panel_bytes() // 1024} KB; L2 "
          f"{f'{l2 // 1024} KB' if l2 else 'unknown'}")
    for p in plans:
        print()
        print(p.describe())
    return 0


def cmd_compare(args) -> int:
    from sparsenet.compare import compare
    path = compare(args.results, args.out, threads=args.threads)
    print(path)
    print("\n".join(path.read_text().splitlines()[:3]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from sparsenet.names import ENGINES, METHODS

    parser = argparse.ArgumentParser(prog="sparsenet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fetch", help="load a data set into the cache (download or offline copy)")
    _add_data_args(p)
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("train", help="train one MLP and save it as .npz")
    _add_data_args(p)
    p.add_argument("--seed", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--optimizer", choices=("adam", "sgd"))
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--sizes", type=_ints, help="layer sizes, e.g. 784,1000,1000,500,200,10")
    p.add_argument("--bias", action="store_true", default=None, help="give every layer a bias")
    p.add_argument("--val", dest="n_val", type=int,
                   help="training images held out for validation (default: a tenth, at most 5000)")
    p.add_argument("--out", help="where to save the model (default models/<dataset>-seed<k>.npz)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("study", help="the whole study: train, prune, time every engine, report")
    p.add_argument("--quick", action="store_true", help="small grid and training subset: a first look")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--accuracy-only", action="store_true",
                       help="train, save the timed net, run the accuracy sweep and activations, then stop: "
                            "no timing (then --timing-only on each machine to be measured)")
    split.add_argument("--timing-only", metavar="RESULTS",
                       help="time this machine on the net saved in a results folder, e.g. results/<run id>: "
                            "no data, no training; writes into it, or into RESULTS@<machine> when it holds "
                            "another machine's timings (timing options such as --threads may be given)")
    _add_study_options(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("plan", help="print which kernels an engine runs on this machine, per batch and "
                                    "threads, and why")
    p.add_argument("--engine", default="csr", choices=ENGINES, help="engine (default csr)")
    p.add_argument("--batch", type=_ints, default=(1, 16, 256), help="batch sizes, e.g. 1,16,256 (the default)")
    p.add_argument("--threads", type=_ints, help="thread counts, e.g. 1,2 (default: 1 and all available)")
    p.add_argument("--sparsity", type=_sparsity, default=0.0, help="prune to this k first, e.g. 90 or 0.9")
    p.add_argument("--method", choices=METHODS, help="pruning method (default: the engine's, weight for csr)")
    p.add_argument("--checkpoint", help="a trained net (.npz from `sparsenet train`) instead of a "
                                        "He-initialised default one")
    p.add_argument("--json", action="store_true", help="the plans as JSON (Plan.to_dict)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("compare", help="several machines' results folders in one report")
    p.add_argument("results", nargs="+", help="results folders (of `sparsenet study` on each machine)")
    p.add_argument("--out", default="compare", help="folder for compare.md and its figure (default ./compare)")
    p.add_argument("--threads", type=int, help="thread count compared (default: the largest each timed)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="(re)build the efficiency report of a results folder")
    p.add_argument("results", help="a results folder, e.g. results/<run id>")
    p.add_argument("--threads", type=int, help="thread count the verdict uses (default: the largest timed)")
    p.set_defaults(func=cmd_report)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, a batch scheduler), raised where the command is, so that it unwinds as on
    Ctrl-C: the run lock released, the worker processes stopped, their temporary files removed."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM raises Terminated while the command runs (by default it would end this process at once,
    leaving its worker processes waiting forever for tasks and the shared data in the temporary folder);
    a handler someone else installed, or a call from another thread, is left alone."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _sigterm_interrupts():
            return args.func(args)
    except KeyboardInterrupt as exc:
        print("interrupted; completed steps are saved and a re-run resumes from them", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(exc, Terminated) else 130
    except (ValueError, RuntimeError) as exc:
        # our errors carry a message meant for the user; a traceback would only hide it
        print(f"sparsenet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # a path that cannot be read or written (a folder, read-only, too long...): name it, in one line
        print(f"sparsenet {args.command}: error: {_os_error_text(exc)}", file=sys.stderr)
        return 2


def _os_error_text(exc: OSError) -> str:
    """`<path>: <strerror>` when the error names a path, else its message (our FileNotFoundErrors)."""
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


if __name__ == "__main__":
    raise SystemExit(main())
