"""The command line: `sparsenet {fetch,train,study,report}` (also `python -m sparsenet`).

Heavy modules are imported inside each command, so `sparsenet --help` is instant.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys


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
        if not value.is_integer():
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


def _add_data_args(p):
    p.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"))
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


def _train_config(args):
    from sparsenet.train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    return TrainConfig(**given)


def cmd_train(args) -> int:
    from sparsenet import checkpoint, train
    from sparsenet.files import check_writable

    seed = train.TrainConfig().seed if args.seed is None else args.seed
    # checked before training, whose result would otherwise be lost to a bad path
    out = check_writable(args.out or f"models/{args.dataset}-seed{seed}.npz")
    ds = _load_data(args)
    n = len(ds.train_images)
    if args.n_val is None:
        args.n_val = train.default_n_val(n)
    train.check_n_val(args.n_val, n, flag="--val")
    cfg = _train_config(args)
    params, meta = train.train(ds, cfg, progress=not args.quiet)
    checkpoint.save(out, params, meta)
    print(f"test accuracy {meta['test_acc']:.4f}, test loss {meta['test_loss']:.4f}; saved {out}")
    return 0


def study_config(args):
    """The StudyConfig of parsed `sparsenet study` arguments (omitted options keep the defaults)."""
    from sparsenet import study

    fields = {f.name for f in dataclasses.fields(study.StudyConfig)} - {"is_quick"}
    overrides = {k: None if v is UNSET else v for k, v in vars(args).items() if k in fields and v is not None}
    return study.StudyConfig.quick(**overrides) if args.quick else study.StudyConfig(**overrides)


def cmd_study(args) -> int:
    from sparsenet import study

    study.run_study(study_config(args), progress=not args.quiet)
    return 0


def cmd_report(args) -> int:
    from sparsenet import report

    path = report.build_report(args.results, threads=args.threads)
    print(f"report written to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
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
    p.add_argument("--dataset", choices=("mnist", "fashion-mnist"))
    p.add_argument("--data-dir")
    # every StudyConfig field that shapes the results has an option, so the report's reproduce
    # command (report.reproduce_command) can give back the exact configuration
    p.add_argument("--seeds", type=_ints, help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--sparsities", type=_sparsities, help="e.g. 0,25,50,90 (percent) or 0,0.5,0.9")
    p.add_argument("--methods", type=_names, help="pruning methods of the accuracy sweep, e.g. weight,neuron")
    p.add_argument("--engines", type=_names, help="engines to time, e.g. dense,csr,shrunk")
    p.add_argument("--batches", type=_ints, help="batch sizes to time, e.g. 1,256")
    p.add_argument("--threads", type=_ints, help="thread counts to time, e.g. 1,2")
    p.add_argument("--widths", type=_ints, help="scaling study layer widths, e.g. 1024,4096 ('' skips it)")
    p.add_argument("--scaling-threads", type=_ints, help="thread counts of the scaling study, e.g. 1")
    p.add_argument("--scaling-sparsities", type=_or_unset(_sparsities, "same"),
                   help="k of the scaling study ('same': those of --sparsities)")
    p.add_argument("--epochs", type=_or_unset(int, "default"),
                   help="training epochs per seed ('default': the trainer's)")
    p.add_argument("--train-subset", type=_or_unset(int, "all"),
                   help="train on the first N training images ('all': every one)")
    p.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs (0: one-shot only)")
    p.add_argument("--finetune-sparsities", type=_or_unset(_sparsities, "all"),
                   help="k that are fine-tuned ('all': every k of --sparsities)")
    p.add_argument("--finetune-lr", type=float, help="fine-tuning peak learning rate")
    p.add_argument("--rounds", type=int, help="timing rounds per case")
    p.add_argument("--min-time", type=float, help="seconds per timing round per case")
    p.add_argument("--max-case-s", type=float, help="time budget of one case (a slow case gets fewer rounds)")
    p.add_argument("--max-call-s", type=float, help="skip a case predicted slower than this per call")
    p.add_argument("--dense-every-k", action=argparse.BooleanOptionalAction, default=None,
                   help="time dense at every k, not only at the smallest")
    p.add_argument("--model-cache", dest="cache_dir", help="trained-model cache folder")
    p.add_argument("--results-dir", help="parent folder of the run folders (default results/)")
    p.add_argument("--run-id", help="name of the run folder (default: from the configuration, so a "
                                    "re-run resumes)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("report", help="(re)build the efficiency report of a results folder")
    p.add_argument("results", help="a results folder, e.g. results/<run id>")
    p.add_argument("--threads", type=int, help="thread count the verdict uses (default: the largest timed)")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted; completed steps are saved and a re-run resumes from them", file=sys.stderr)
        return 130
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
