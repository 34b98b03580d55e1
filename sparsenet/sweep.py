"""The accuracy sweep: prune trained nets at each sparsity k, by weight and by neuron, and measure
test accuracy and loss one-shot, after fine-tuning with the mask held fixed, or after gradual
magnitude pruning (Zhu & Gupta 2017).

Results follow the ``accuracy.json`` schema of `sparsenet.results`. `run_and_save` writes the file
after every finished (recovery, method, seed) and skips those on restart, so it is resumable.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from sparsenet.files import read_json, write_json
from sparsenet.model import evaluate
from sparsenet.names import (
    ALL_METHODS, METHODS, NM_M, NM_RECOVERY_SPARSITIES, RECOVERIES, SPARSITIES as SWEEP_SPARSITIES,
    method_sparsities,
)
from sparsenet.progress import say
from sparsenet.prune import (
    DEFAULT_BLOCK, apply_masks, check_sparsity, expand_masked, make_masks, shrink, shrink_masked,
)
from sparsenet.train import fit


def evaluate_pruned(params, X, y, batch: int = 10000):
    """(accuracy, loss) of a pruned net, computed on its shrunk twin: the same function (dead
    neurons output ReLU(0) = 0; equal to float rounding, see tests/test_prune.py), much cheaper
    after neuron pruning."""
    return evaluate(shrink(params), X, y, batch=batch)


def _check_args(sparsities, methods):
    sparsities = [check_sparsity(s) for s in sparsities]
    for m in methods:
        if m not in ALL_METHODS:
            raise ValueError(f"method must be one of {ALL_METHODS}, got {m!r}")
    return sparsities, list(methods)


def curve_sparsities(method: str, recovery: str, sparsities, finetune_sparsities, gradual_sparsities) -> tuple:
    """The k of one (method, recovery) curve: one-shot at every k of the sweep where the method
    exists (N:M only at k = 1 - N/M: names.has_sparsity); fine-tuned at `finetune_sparsities`,
    gradual at `gradual_sparsities`, except N:M, recovered at its patterns
    names.NM_RECOVERY_SPARSITIES (2:4, 1:4) whatever those lists hold."""
    if recovery == "oneshot":
        return method_sparsities(method, sparsities)
    if method == "nm":
        return tuple(NM_RECOVERY_SPARSITIES)
    return tuple(finetune_sparsities if recovery == "finetuned" else gradual_sparsities)


# --- one-shot ---------------------------------------------------------------------------------

def oneshot_sweep(params, X_test, y_test, sparsities=SWEEP_SPARSITIES, methods=METHODS,
                  scope: str = "layer", prune_output: bool = False, batch: int = 10000) -> dict:
    """Test accuracy and loss of the pruned net at each k, no retraining.

    Returns {method: {"sparsities": [k...], "accuracy": [per k], "loss": [per k]}}; N:M only at
    the k where it exists (names.has_sparsity).
    """
    sparsities, methods = _check_args(sparsities, methods)
    out = {}
    for method in methods:
        acc, loss = [], []
        ks = list(method_sparsities(method, sparsities))
        for s in ks:
            pruned = apply_masks(params, make_masks(params, method, s, scope, prune_output))
            a, l = evaluate_pruned(pruned, X_test, y_test, batch=batch)
            acc.append(float(a))
            loss.append(float(l))
        out[method] = {"sparsities": ks, "accuracy": acc, "loss": loss}
    return out


# --- fine-tuning with a fixed mask ------------------------------------------------------------

def finetune(params, masks, X_train, y_train, X_val, y_val, cfg, progress: bool = True):
    """Apply `masks`, then train with them held fixed (pruned weights, and the rows and biases of
    removed neurons, stay exactly zero). Epochs etc. come from the TrainConfig `cfg`. Removed neurons
    are left out while training (prune.shrink_masked: the same net, a smaller one to train).

    Returns fit's best-on-validation parameters, in the shapes of `params`.
    """
    small, small_masks, kept = shrink_masked(params, masks)
    best, _history = fit(small, X_train, y_train, X_val, y_val, cfg, masks=small_masks,
                         progress=progress)
    return expand_masked(best, kept, apply_masks(params, masks))


# --- gradual magnitude pruning ----------------------------------------------------------------

def gmp_sparsity(step: int, final_sparsity: float, initial_sparsity: float = 0.0,
                 start_step: int = 0, n_prunes: int = 10, prune_every: int = 100) -> float:
    """Zhu & Gupta's cubic schedule: s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3 on
    [t0, t0 + n dt]; s_i before t0 and s_f after."""
    span = n_prunes * prune_every
    if span <= 0:                       # no ramp: straight to the final sparsity
        return float(final_sparsity)
    if step <= start_step:
        return float(initial_sparsity)
    if step >= start_step + span:
        return float(final_sparsity)
    frac = 1.0 - (step - start_step) / span
    return float(final_sparsity + (initial_sparsity - final_sparsity) * frac ** 3)


@dataclasses.dataclass(frozen=True)
class GMPConfig:
    """When and how fast gradual magnitude pruning removes weights (in training steps)."""

    initial_sparsity: float = 0.0   # s_i, applied at start_step
    start_step: int = 0             # t0: first pruning step
    prune_every: int = 100          # dt: steps between two mask updates
    n_prunes: Optional[int] = None  # n: number of updates; None -> end at `end_fraction` of training
    end_fraction: float = 0.75      # with n_prunes None: pruning ends this far into training


def resolve_gmp(gmp: GMPConfig, total_steps: int) -> GMPConfig:
    """`gmp` with n_prunes filled in (from end_fraction when None); checks that the last update,
    at t0 + n dt, falls inside training (steps 0 .. total_steps - 1)."""
    t0, dt = int(gmp.start_step), int(gmp.prune_every)
    if dt < 1 or t0 < 0:
        raise ValueError(f"need prune_every >= 1 and start_step >= 0, got {dt}, {t0}")
    n = gmp.n_prunes
    if n is None:
        n = max(1, (int(gmp.end_fraction * total_steps) - t0) // dt)
    if n < 0 or t0 + n * dt > total_steps - 1:
        raise ValueError(f"the last pruning step t0 + n dt = {t0} + {n} * {dt} is not inside the "
                         f"{total_steps} training steps; lower prune_every or n_prunes")
    return dataclasses.replace(gmp, n_prunes=int(n))


def gmp_mask_schedule(method: str, final_sparsity, gmp: GMPConfig, scope: str = "layer",
                      prune_output: bool = False) -> Callable:
    """A `mask_schedule(step, params)` for train.fit: new magnitude masks at t0, t0 + dt, ...,
    t0 + n dt (at the sparsity of the cubic schedule), None at every other step (fit then keeps
    the active masks). `gmp.n_prunes` must be set (see resolve_gmp).

    Masks are recomputed on the current weights; already-pruned entries are zero and so rank
    first, hence the pruned set only grows (ties broken by the stable order of prune.py).
    """
    s_f = check_sparsity(final_sparsity)
    s_i = check_sparsity(gmp.initial_sparsity)
    t0, dt, n = int(gmp.start_step), int(gmp.prune_every), gmp.n_prunes
    if n is None or n < 0 or dt < 1:
        raise ValueError(f"need n_prunes >= 0 and prune_every >= 1, got {n}, {dt}")

    def schedule(step, params):
        if step < t0 or step > t0 + n * dt or (step - t0) % dt:
            return None
        return make_masks(params, method, gmp_sparsity(step, s_f, s_i, t0, n, dt), scope,
                          prune_output, nm_nearest=True)        # N:M ramps through its nearest patterns

    return schedule


def gradual_prune(params, method: str, final_sparsity, X_train, y_train, X_val, y_val, cfg,
                  gmp: GMPConfig = GMPConfig(), scope: str = "layer", prune_output: bool = False,
                  progress: bool = True):
    """Train `params` (usually a trained dense net) for cfg.epochs while pruning it gradually to
    `final_sparsity` on the cubic schedule. The result has exactly the final sparsity: the last
    update (inside training, see resolve_gmp) applies it, and fit picks its best epoch only among
    those after the last mask change."""
    s_f = check_sparsity(final_sparsity)
    total = math.ceil(len(X_train) / int(cfg.batch_size)) * int(cfg.epochs)
    gmp = resolve_gmp(gmp, total)
    schedule = gmp_mask_schedule(method, s_f, gmp, scope, prune_output)
    best, _history = fit(params, X_train, y_train, X_val, y_val, cfg, mask_schedule=schedule,
                         progress=progress)
    return best


# --- the full sweep and its results file -------------------------------------------------------

def _with_seed(cfg, seed):
    if cfg is not None and dataclasses.is_dataclass(cfg) and any(
            f.name == "seed" for f in dataclasses.fields(cfg)):
        return dataclasses.replace(cfg, seed=int(seed))
    return cfg


def _n_rows(X):
    return None if X is None else len(X)


def _cfg_json(cfg):
    if cfg is None:
        return None
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)


def _curve_values(recovery, method, params, data, sparsities, train_cfg, gmp, scope,
                  prune_output, seed, progress):
    """(accuracy per k, loss per k) of one (recovery, method, seed); train_cfg: the TrainConfig of
    the recovery (fine-tuning's or gradual pruning's)."""
    X_train, y_train, X_val, y_val, X_test, y_test = data
    acc, loss = [], []
    for s in sparsities:
        if recovery == "oneshot":
            net = apply_masks(params, make_masks(params, method, s, scope, prune_output))
        elif recovery == "finetuned":
            masks = make_masks(params, method, s, scope, prune_output)
            net = finetune(params, masks, X_train, y_train, X_val, y_val,
                           _with_seed(train_cfg, seed), progress=progress)
        elif recovery == "gradual":
            net = gradual_prune(params, method, s, X_train, y_train, X_val, y_val,
                                _with_seed(train_cfg, seed), gmp=gmp, scope=scope,
                                prune_output=prune_output, progress=progress)
        else:
            raise ValueError(f"recovery must be one of {RECOVERIES}, got {recovery!r}")
        a, l = evaluate_pruned(net, X_test, y_test)
        acc.append(float(a))
        loss.append(float(l))
    return acc, loss


def _jsonable(obj):
    """obj as it reads back from JSON (tuples -> lists, numpy scalars -> Python), to compare."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _empty_result(dataset, sparsities, seeds, curve_ks, config):
    """The accuracy.json skeleton; curve_ks: {(recovery, method): its k}, in curve order."""
    curves = []
    for (recovery, method), ks in curve_ks.items():
        c = {"method": method, "recovery": recovery, "seeds": [],
             "accuracy": [[] for _ in ks], "loss": [[] for _ in ks]}
        if list(ks) != list(sparsities):
            c["sparsities"] = list(ks)
        curves.append(c)
    return {"dataset": dataset, "sparsities": list(sparsities), "seeds": list(seeds),
            "dense": {"accuracy": [None] * len(seeds), "loss": [None] * len(seeds)},
            "curves": curves, "config": config, "complete": False}


def run_sweep(models: Sequence, X_train, y_train, X_val, y_val, X_test, y_test,
              sparsities=SWEEP_SPARSITIES, methods=METHODS, recoveries=("oneshot", "finetuned"),
              finetune_cfg=None, finetune_sparsities=None, seeds=None, gmp: GMPConfig = GMPConfig(),
              gradual_sparsities=None, gradual_methods=None, gradual_cfg=None,
              scope: str = "layer", prune_output: bool = False, dataset: str = "mnist",
              progress: bool = True, previous: Optional[dict] = None,
              on_update: Optional[Callable[[dict], None]] = None, runner=None) -> dict:
    """Prune every model (one per seed) at every k by every method, recover as asked, and measure
    test accuracy/loss. Returns the accuracy.json dict (see sparsenet.results). The training and
    validation arrays may be None for a one-shot-only sweep.

    `finetune_sparsities` (default: `sparsities`) are the k of the "finetuned" curves,
    `gradual_sparsities` (default: finetune_sparsities) those of the "gradual" ones, which run for
    `gradual_methods` only (default: every method); N:M curves have their own k (curve_sparsities),
    and a curve whose k differ from `sparsities` carries its own "sparsities". `finetune_cfg` is the
    TrainConfig of fine-tuning and `gradual_cfg` (default: finetune_cfg) that of gradual pruning
    (their seed is set to the model's seed). Work runs recovery by recovery
    (all cheap one-shot results first), then method, then seed; `on_update(result)` is called after
    each finished (recovery, method, seed) and after the dense evaluation. With `previous` (an
    earlier result for the same data set and models), finished entries whose method, recovery,
    k and settings are unchanged are kept and skipped (see _merge_previous, _check_dense).

    Besides the schema, the dict carries "complete" (all entries done) and, per curve, "seeds":
    the seeds whose values are filled in so far, in the order of the per-k lists.

    `runner` (cluster.LocalRunner by default, or cluster.DaskRunner) runs the work as independent
    tasks (a one-shot curve per seed; a fine-tuned or gradual curve per seed and k) and hands back
    each as it finishes; an entry is saved as soon as all its k are in. A model may be a
    cluster.Pending (a net still training in a worker): its tasks come after the others' and wait
    for it.
    """
    sparsities, methods = _check_args(sparsities, methods)
    for r in recoveries:
        if r not in RECOVERIES:
            raise ValueError(f"recovery must be one of {RECOVERIES}, got {r!r}")
    seeds = list(range(len(models))) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != len(models):
        raise ValueError(f"{len(seeds)} seeds for {len(models)} models")
    ft_ks = sparsities if finetune_sparsities is None else _check_args(finetune_sparsities, [])[0]
    gr_ks = ft_ks if gradual_sparsities is None else _check_args(gradual_sparsities, [])[0]
    gr_methods = methods if gradual_methods is None else _check_args([], gradual_methods)[1]
    if any(r != "oneshot" for r in recoveries) and finetune_cfg is None:
        raise ValueError("fine-tuned and gradual curves need a finetune_cfg (a TrainConfig)")
    gradual_cfg = finetune_cfg if gradual_cfg is None else gradual_cfg
    curve_ks = {}
    for r in recoveries:
        for m in methods:
            ks = curve_sparsities(m, r, sparsities, ft_ks, gr_ks)
            if ks and (r != "gradual" or m in gr_methods):
                curve_ks[r, m] = ks
    config = _jsonable({
        "scope": scope, "prune_output": bool(prune_output), "methods": methods,
        "block": list(DEFAULT_BLOCK), "nm_m": NM_M,       # the shapes of block and N:M pruning
        "recoveries": list(recoveries),
        "finetune": _cfg_json(finetune_cfg),        # its seed is replaced by each model's seed
        "gmp": _cfg_json(gmp) if "gradual" in recoveries else None,
        "gradual": _cfg_json(gradual_cfg) if "gradual" in recoveries else None,
        "n_train": _n_rows(X_train), "n_val": _n_rows(X_val), "n_test": _n_rows(X_test),
    })
    result = _empty_result(dataset, sparsities, seeds, curve_ks, config)
    if previous is not None:
        _merge_previous(result, previous)
    data = (X_train, y_train, X_val, y_val, X_test, y_test)
    update = on_update or (lambda r: None)

    from sparsenet.cluster import LocalRunner, Pending
    # a net may still be training in a worker (cluster.Pending): its dense check and tasks come last,
    # after those of the trained nets, and wait for it
    later = [i for i, m in enumerate(models) if isinstance(m, Pending)]
    now = [i for i in range(len(models)) if i not in later]
    _check_dense(result, models, X_test, y_test, now)
    update(result)
    runner = runner or LocalRunner()
    shared = runner.share(data)
    started, pending, where = {}, {}, {}

    def seed_tasks(seed_idx):
        # one task per (curve, seed) for one-shot curves (cheap: a prune and an evaluation per k), one
        # per (curve, seed, k) for fine-tuned and gradual ones (each k trains): tasks of similar length
        for i, curve in enumerate(result["curves"]):
            ks = curve.get("sparsities", sparsities)
            for s in seed_idx:
                seed, params = seeds[s], models[s]
                if seed in curve["seeds"]:
                    continue
                started[i, seed] = time.perf_counter()
                pending[i, seed] = {}
                parts = [list(range(len(ks)))] if curve["recovery"] == "oneshot" else [[j] for j in range(len(ks))]
                for js in parts:
                    key = f"{curve['recovery']}-{curve['method']}-seed{seed}" + (
                        f"-k{ks[js[0]]:g}" if len(js) == 1 and len(ks) > 1 else "")
                    where[key] = (i, seed, js)
                    yield key, (curve["recovery"], curve["method"], params, shared, [ks[j] for j in js],
                                gradual_cfg if curve["recovery"] == "gradual" else finetune_cfg, gmp, scope,
                                prune_output, seed, progress and type(runner) is LocalRunner)

    def tasks():
        yield from seed_tasks(now)
        for s in later:
            models[s] = models[s].result()          # waits for the net (this runs beside the results)
            _check_dense(result, models, X_test, y_test, [s])
            yield from seed_tasks([s])

    models = list(models)
    for key, (acc, loss) in runner.map_unordered(_curve_values, tasks()):
        i, seed, js = where[key]
        pending[i, seed].update({j: (a, l) for j, a, l in zip(js, acc, loss)})
        curve = result["curves"][i]
        ks = curve.get("sparsities", sparsities)
        if len(pending[i, seed]) < len(ks):
            continue
        done = pending.pop((i, seed))
        for j in range(len(ks)):
            curve["accuracy"][j].append(done[j][0])
            curve["loss"][j].append(done[j][1])
        curve["seeds"].append(seed)
        say("sweep", f"{curve['recovery']}/{curve['method']} seed {seed}: {time.perf_counter() - started[i, seed]:.1f} s, "
            "acc " + " ".join(f"{k:g}:{done[j][0]:.4f}" for j, k in enumerate(ks)), progress)
        update(result)
    _reorder_seeds(result)
    result["complete"] = True
    update(result)
    return result


def _curve_key(curve, top_sparsities, config):
    """What a curve's values depend on besides the models: method, recovery, k and settings."""
    recovery = curve["recovery"]
    settings = [config.get("scope"), config.get("prune_output")]
    if curve["method"] in ("block", "nm"):
        settings.append(config.get("block" if curve["method"] == "block" else "nm_m"))
    if recovery == "finetuned":
        settings.append(config.get("finetune"))
    if recovery == "gradual":
        settings += [config.get("gradual", config.get("finetune")), config.get("gmp")]
    ks = curve.get("sparsities", top_sparsities)
    return json.dumps([curve["method"], recovery, ks, settings], sort_keys=True)


def _merge_previous(result, previous):
    """Copy finished entries of `previous` into `result`: dense values per seed and curve values
    per seed whose method, recovery, k and settings are unchanged. Refuses another data set, and
    refuses to drop seeds or finished curves that this run would not recompute."""
    if previous.get("dataset") != result["dataset"]:
        raise ValueError(f"the existing results are for {previous.get('dataset')!r}, not "
                         f"{result['dataset']!r}; use a new output folder")
    old_seeds = previous.get("seeds", [])
    lost = sorted(set(old_seeds) - set(result["seeds"]))
    if lost:
        raise ValueError(f"the existing results hold seeds {lost}, which this run would drop; "
                         "pass their models too or use a new output folder")
    for i, seed in enumerate(result["seeds"]):
        if seed in old_seeds:
            j = old_seeds.index(seed)
            a, l = previous["dense"]["accuracy"][j], previous["dense"]["loss"][j]
            if a is not None:
                result["dense"]["accuracy"][i], result["dense"]["loss"][i] = a, l
    new = {_curve_key(c, result["sparsities"], result["config"]): c for c in result["curves"]}
    dropped = []
    for prev in previous.get("curves", []):
        curve = new.get(_curve_key(prev, previous["sparsities"], previous.get("config", {})))
        if curve is None:
            if prev.get("seeds") or any(prev["accuracy"]):
                dropped.append(f"{prev['method']}/{prev['recovery']}")
            continue
        # a file without per-curve "seeds" (the bare schema): complete rows follow the top level
        full = all(len(row) == len(old_seeds) for row in prev["accuracy"])
        for pos, seed in enumerate(prev.get("seeds", old_seeds if full else [])):
            if seed in result["seeds"] and seed not in curve["seeds"]:
                for j in range(len(curve["accuracy"])):
                    curve["accuracy"][j].append(prev["accuracy"][j][pos])
                    curve["loss"][j].append(prev["loss"][j][pos])
                curve["seeds"].append(seed)
    if dropped:
        raise ValueError(f"the existing results hold finished curves ({', '.join(dropped)}) made "
                         "with other sparsities or settings, which this run would overwrite; "
                         "use a new output folder")


def _check_dense(result, models, X_test, y_test, which=None):
    """The models (those at the indices `which`; None: all) must be those of the stored results: their
    dense test figures must match."""
    for i in range(len(models)) if which is None else which:
        a, l = evaluate(models[i], X_test, y_test)
        old_a, old_l = result["dense"]["accuracy"][i], result["dense"]["loss"][i]
        # tolerance: another BLAS thread count may round differently and flip an argmax or two
        if old_a is not None and (abs(old_a - a) * len(y_test) > 2
                                  or not math.isclose(old_l, l, rel_tol=1e-4)):
            raise ValueError(f"seed {result['seeds'][i]}: the model's test accuracy {a} differs "
                             f"from the stored {old_a}; these are other models, use a new folder")
        result["dense"]["accuracy"][i], result["dense"]["loss"][i] = float(a), float(l)


def _reorder_seeds(result):
    """Once complete, per-seed lists follow the top-level seed order."""
    for curve in result["curves"]:
        order = [curve["seeds"].index(s) for s in result["seeds"]]
        curve["accuracy"] = [[row[p] for p in order] for row in curve["accuracy"]]
        curve["loss"] = [[row[p] for p in order] for row in curve["loss"]]
        curve["seeds"] = list(result["seeds"])


def run_and_save(out_dir, models: Sequence, X_train, y_train, X_val, y_val, X_test, y_test,
                 **kwargs) -> dict:
    """run_sweep, writing out_dir/accuracy.json atomically after every finished entry; an existing
    file of the same configuration is resumed (its finished entries are skipped)."""
    path = Path(out_dir) / "accuracy.json"
    previous = read_json(path) if path.exists() else None
    return run_sweep(models, X_train, y_train, X_val, y_val, X_test, y_test, previous=previous,
                     on_update=lambda r: write_json(path, r), **kwargs)
