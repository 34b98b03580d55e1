"""Optimiser and training loop: mini-batch Adam / SGD-momentum, validation split, best weights, cache.

The step keeps matmuls in BLAS (into preallocated buffers) and uses the Numba kernels of
`train_kernels.py` for the elementwise work; `model.loss_and_grads` is its oracle in the tests.
"""
from __future__ import annotations

import dataclasses
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from sparsenet import __version__
from sparsenet import train_kernels as K
from sparsenet.checks import is_integer, is_real, is_sequence
from sparsenet.data import to_float
from sparsenet.hashing import short_hash
from sparsenet.progress import bar as progress_bar, say
from sparsenet.model import DEFAULT_SIZES, Layer, as_layers, evaluate, he_init, layer_sizes
from sparsenet.threads import limit


class TrainingError(RuntimeError):
    """Training diverged (non-finite loss)."""


@dataclass(frozen=True)
class TrainConfig:
    sizes: tuple = DEFAULT_SIZES   # layer widths, input first, classes last
    bias: bool = False             # biases on every layer (the reference net has none)
    optimizer: str = "adam"        # "adam" (AdamW-style decay) or "sgd" (heavy-ball momentum)
    lr: float = 1e-3               # peak learning rate
    momentum: float = 0.9          # SGD momentum; Adam's beta1
    beta2: float = 0.999           # Adam's second-moment decay
    eps: float = 1e-8              # Adam's denominator guard
    weight_decay: float = 0.5      # decoupled: w -= lr_t * weight_decay * w each step (scaled by the
                                   # scheduled lr, so 0.5 shrinks by ~0.5e-3 a step at the peak); it drives
                                   # the weights of dead input pixels to ~0, so magnitude pruning removes
                                   # them first: one-shot 90% weight pruning 95.1% -> 97.2% (3 seeds)
    schedule: str = "cosine"       # "constant"; "cosine" per step to lr * min_lr_frac; "exp" per epoch
    lr_decay: float = 0.8          # "exp" only: lr multiplier per epoch
    min_lr_frac: float = 0.0       # "cosine" only: final lr as a fraction of lr
    epochs: int = 15               # passes over the training split
    batch_size: int = 128          # rows per step; the last, smaller batch of an epoch is kept
    n_val: int = 5000              # images held out of the training set for validation (train())
    seed: int = 0                  # initialisation, validation split and data order

    def __post_init__(self):
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.schedule not in ("constant", "cosine", "exp"):
            raise ValueError(f"schedule must be 'constant', 'cosine' or 'exp', got {self.schedule!r}")
        rules = (("lr", is_real(self.lr, 0, low_open=True), "a number > 0"),
                 ("momentum", is_real(self.momentum, 0, 1, high_open=True), "a number in [0, 1)"),
                 ("beta2", is_real(self.beta2, 0, 1, high_open=True), "a number in [0, 1)"),
                 ("eps", is_real(self.eps, 0, low_open=True), "a number > 0"),
                 ("weight_decay", is_real(self.weight_decay, 0), "a number >= 0"),
                 ("lr_decay", is_real(self.lr_decay, 0, 1, low_open=True), "a number in (0, 1]"),
                 ("min_lr_frac", is_real(self.min_lr_frac, 0, 1), "a number in [0, 1]"),
                 ("epochs", is_integer(self.epochs, 1), "an integer >= 1"),
                 ("batch_size", is_integer(self.batch_size, 1), "an integer >= 1"),
                 ("n_val", is_integer(self.n_val, 0), "an integer >= 0"),
                 ("seed", is_integer(self.seed, 0), "an integer >= 0"),
                 ("bias", isinstance(self.bias, bool), "True or False"))
        for name, ok, rule in rules:
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")
        sizes = tuple(self.sizes) if is_sequence(self.sizes) else ()
        if len(sizes) < 2 or not all(is_integer(s, 1) for s in sizes):
            raise ValueError(f"sizes must be two or more layer widths >= 1, input first, classes last "
                             f"(e.g. 784,1000,10), got {','.join(map(str, sizes)) or repr(self.sizes)}")
        object.__setattr__(self, "sizes", tuple(int(s) for s in sizes))


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate of global step `step` (0-based)."""
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "exp":
        return cfg.lr * cfg.lr_decay ** (step // steps_per_epoch)
    frac = step / max(1, cfg.epochs * steps_per_epoch)
    lo = cfg.lr * cfg.min_lr_frac
    return lo + (cfg.lr - lo) * 0.5 * (1.0 + math.cos(math.pi * frac))


# --- masks -------------------------------------------------------------------------------------

_NO_MASK = np.zeros(0, dtype=np.bool_)


def _check_masks(masks, params):
    """Validate masks against params; return per-layer flat (keep_w, keep_b) bool arrays."""
    if len(masks) != len(params):
        raise ValueError(f"masks has {len(masks)} layers, params has {len(params)}")
    flat = []
    for i, ((keep_w, keep_b), layer) in enumerate(zip(masks, params)):
        keep_w = np.asarray(keep_w)
        if keep_w.shape != layer.weight.shape or keep_w.dtype != np.bool_:
            raise ValueError(f"layer {i}: weight mask must be bool {layer.weight.shape}, "
                             f"got {keep_w.dtype} {keep_w.shape}")
        if keep_b is not None:
            keep_b = np.asarray(keep_b)
            if layer.bias is None or keep_b.shape != layer.bias.shape or keep_b.dtype != np.bool_:
                raise ValueError(f"layer {i}: bias mask does not match the bias")
        flat.append((np.ascontiguousarray(keep_w).reshape(-1),
                     _NO_MASK if keep_b is None else np.ascontiguousarray(keep_b)))
    return flat


class _ReadOnly:
    """Lend the live parameters to a callback without letting it write to them."""

    def __init__(self, params):
        self.arrays = [a for layer in params for a in layer if a is not None]

    def __enter__(self):
        for a in self.arrays:
            a.flags.writeable = False

    def __exit__(self, *exc):
        for a in self.arrays:
            a.flags.writeable = True


# --- the step ----------------------------------------------------------------------------------

# the step's elementwise kernels: Numba (used) and their NumPy twins (oracle and benchmark baseline)
KERNELS = {
    "numba": {name: getattr(K, name) for name in K.__all__},
    "numpy": {name: getattr(K, name + "_numpy") for name in K.__all__},
}


class _Trainer:
    """Parameters, gradients, optimiser state and activation buffers for one fit()."""

    def __init__(self, params, cfg: TrainConfig, kernels: str = "numba", max_rows: Optional[int] = None):
        """max_rows: the rows of the training set, when known: no batch holds more (the buffers are sized
        for the largest batch; --batch-size 10**8 asked for 292 GiB of them on MNIST)."""
        self.cfg = cfg
        self.k = KERNELS[kernels]
        self.params = tuple(Layer(np.array(l.weight, np.float32, order="C"),
                                  None if l.bias is None else np.array(l.bias, np.float32))
                            for l in params)
        self.arrays = [a for l in self.params for a in l if a is not None]     # order: w0, b0, w1, ...
        self.grads = [np.zeros_like(a) for a in self.arrays]
        self.state = [(np.zeros(a.size, np.float32), np.zeros(a.size, np.float32)) for a in self.arrays]
        self.keep = [_NO_MASK] * len(self.arrays)
        self.t = 0
        B, sizes = min(cfg.batch_size, max_rows or cfg.batch_size), layer_sizes(self.params)
        self.acts = [np.empty((B, n), np.float32) for n in sizes]       # acts[0] = input batch
        self.deltas = [np.empty((B, n), np.float32) for n in sizes]     # dL/d(pre-activation)
        # matmul results land here before the elementwise kernels write acts/deltas: kernels whose
        # output aliases an input do not vectorise (LLVM cannot prove the loop safe)
        self.scratch = np.empty(B * max(sizes[1:]), np.float32)

    def set_masks(self, masks):
        flat = _check_masks(masks, self.params)
        keep = []
        for i, (kw, kb) in enumerate(flat):
            keep.append(kw)
            if self.params[i].bias is not None:
                keep.append(kb)
        self.keep = keep
        for a, k, (m, v) in zip(self.arrays, keep, self.state):
            if k.size:
                a.reshape(-1)[~k] = 0.0        # pruned weights and their optimiser state: exactly zero
                m[~k] = 0.0
                v[~k] = 0.0

    def step(self, X, y, idx, lr):
        """Forward, backward and update on rows `idx`; returns (mean loss, n_correct)."""
        b, L, k = len(idx), len(self.params), self.k
        acts = [a[:b] for a in self.acts]
        deltas = [d[:b] for d in self.deltas]
        np.take(X, idx, axis=0, out=acts[0])                            # (b, n_in)
        yb = y[idx]
        for i, layer in enumerate(self.params):
            if i < L - 1:
                z = self.scratch[:acts[i + 1].size].reshape(acts[i + 1].shape)
                np.matmul(acts[i], layer.weight.T, out=z)               # (b, n_in) -> (b, n_out)
                k['bias_relu'](z, _NO_MASK if layer.bias is None else layer.bias, acts[i + 1])
            else:
                np.matmul(acts[i], layer.weight.T, out=acts[i + 1])
                if layer.bias is not None:
                    acts[i + 1] += layer.bias
        loss, n_correct = k['softmax_xent'](acts[L], yb, deltas[L])
        g = len(self.grads)
        for i in range(L - 1, -1, -1):
            layer, d = self.params[i], deltas[i + 1]
            if layer.bias is not None:
                g -= 1
                np.sum(d, axis=0, out=self.grads[g])
            g -= 1
            np.matmul(d.T, acts[i], out=self.grads[g])                  # (n_out, b) @ (b, n_in)
            if i > 0:
                da = self.scratch[:deltas[i].size].reshape(deltas[i].shape)
                np.matmul(d, layer.weight, out=da)                      # (b, n_out) @ (n_out, n_in)
                k['relu_backward'](da, acts[i], deltas[i])
        if not math.isfinite(loss):
            return loss, n_correct                                      # caller raises; no update
        self.t += 1
        cfg = self.cfg
        bc1, bc2 = 1.0 - cfg.momentum ** self.t, 1.0 - cfg.beta2 ** self.t     # Adam bias corrections
        for a, gr, (m, v), keep in zip(self.arrays, self.grads, self.state, self.keep):
            if cfg.optimizer == "adam":
                k['adam_update'](a.reshape(-1), gr.reshape(-1), m, v, keep, lr, cfg.momentum, cfg.beta2,
                                 cfg.eps, bc1, bc2, cfg.weight_decay)
            else:
                k['sgd_update'](a.reshape(-1), gr.reshape(-1), m, keep, lr, cfg.momentum, cfg.weight_decay)
        return loss, n_correct


def threads_limited(n: Optional[int]):
    """BLAS and Numba use `n` threads inside the block (None: leave them as they are); threads.limit."""
    return nullcontext() if n is None else limit(int(n))


def _copy(params):
    return tuple(Layer(l.weight.copy(), None if l.bias is None else l.bias.copy()) for l in params)


def fit(params: Sequence[Layer], X_train, y_train, X_val, y_val, cfg: TrainConfig,
        masks=None, mask_schedule: Optional[Callable] = None, progress: bool = True,
        threads: Optional[int] = None):
    """Train a copy of `params` on (X_train, y_train); return (best_params, history).

    X_* float32 (N, n_in); y_* integer labels. The layer sizes and biases come from `params`
    (cfg.sizes / cfg.bias only matter to `train`), so shrunk nets can be fine-tuned too.
    best_params are the weights after the epoch with the best validation accuracy (ties: lower
    validation loss); without validation data, the final weights.
    masks: per layer (keep_weight bool, keep_bias bool or None); pruned entries stay exactly zero.
    mask_schedule(step, params) -> masks or None is called before every step (params read-only);
    returned masks replace the active ones at once. Since weights from before a mask change are
    not comparable, the best-epoch search restarts after any epoch in which the masks changed.
    history: lists per epoch of train_loss, train_acc, val_loss, val_acc, epoch_time_s, lr;
    and best_epoch (1-based int).
    threads: BLAS and Numba threads during the fit (None: as set by the caller). On a loaded
    machine 1 thread can be many times faster than 2 (busy-waiting BLAS threads).
    """
    with threads_limited(threads), np.errstate(over="ignore", invalid="ignore"):   # divergence: see below
        return _fit(params, X_train, y_train, X_val, y_val, cfg, masks, mask_schedule, progress)


def _fit(params, X_train, y_train, X_val, y_val, cfg, masks, mask_schedule, progress):
    params = as_layers(params)                   # (weight, bias) pairs too, as pruning and the engines take
    X_train = np.ascontiguousarray(X_train, dtype=np.float32)
    y_train = np.asarray(y_train).astype(np.intp)
    n = X_train.shape[0]
    n_classes = params[-1].weight.shape[0]
    if y_train.shape != (n,) or n == 0 or (y_train.min() < 0 or y_train.max() >= n_classes):
        raise ValueError(f"need labels of shape ({n},) in [0, {n_classes}) and at least one row")
    has_val = X_val is not None and len(X_val) > 0
    tr = _Trainer(params, cfg, max_rows=n)
    if masks is not None:
        tr.set_masks(masks)
    rng = np.random.default_rng([cfg.seed, 2])                         # data order
    steps_per_epoch = -(-n // cfg.batch_size)
    history = {k: [] for k in ("train_loss", "train_acc", "val_loss", "val_acc", "epoch_time_s", "lr")}
    best, best_key, best_epoch = _copy(tr.params), None, 0
    step = 0
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        order = rng.permutation(n)
        loss_sum = correct = seen = 0
        masks_changed = False
        bar = progress_bar(progress, iterable=range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                           leave=True, mininterval=0.5)
        for s in bar:
            if mask_schedule is not None:
                with _ReadOnly(tr.params):
                    new_masks = mask_schedule(step, tr.params)
                if new_masks is not None:
                    tr.set_masks(new_masks)
                    masks_changed = True
            idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            lr = lr_at(cfg, step, steps_per_epoch)
            loss, n_correct = tr.step(X_train, y_train, idx, lr)
            if not math.isfinite(loss):
                bar.close()
                raise TrainingError(f"loss became {loss} at epoch {epoch + 1}, step {s + 1} of "
                                    f"{steps_per_epoch} (global step {step}, lr {lr:.3g}); "
                                    f"try a lower learning rate than {cfg.lr:g}")
            loss_sum += loss * len(idx)
            correct += n_correct
            seen += len(idx)
            step += 1
            if s % 50 == 0 or s == steps_per_epoch - 1:
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
        val_acc, val_loss = evaluate(tr.params, X_val, y_val) if has_val else (float("nan"),) * 2
        dt = time.perf_counter() - t0
        for k, val in zip(history, (loss_sum / seen, correct / seen, val_loss, val_acc, dt, lr)):
            history[k].append(float(val))
        if progress:
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}",
                            val_acc=f"{val_acc:.4f}")
            bar.close()
        if masks_changed:
            best_key = None                                             # earlier weights had other masks
        key = (val_acc, -val_loss) if has_val else (epoch,)
        if best_key is None or key > best_key:
            best, best_key, best_epoch = _copy(tr.params), key, epoch + 1
    history["best_epoch"] = best_epoch
    return best, history


# --- whole runs --------------------------------------------------------------------------------

def default_n_val(n: int) -> int:
    """Validation images held out of `n` training images: a tenth, at most 5000 (MNIST's usual split)."""
    return min(5000, n // 10)


def check_n_val(n_val: int, n: int, flag: str = "n_val") -> None:
    """A clear error unless holding out n_val of n images leaves some to train on."""
    if not is_integer(n_val, 0):
        raise ValueError(f"{flag} must be an integer >= 0, got {n_val!r}")
    if n_val >= n:
        raise ValueError(f"{flag} {n_val} leaves no training images (the training set has {n}); "
                         f"choose {flag} below {n}")


def split_train_val(n: int, n_val: int, seed: int):
    """(train_idx, val_idx): n_val rows held out, chosen by `seed`, each sorted."""
    if not 0 <= n_val < n:
        raise ValueError(f"n_val must be in [0, {n}), got {n_val}")
    perm = np.random.default_rng([seed, 1]).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def check_sizes(sizes, n_features: int, n_classes: int, name: str = "the data") -> None:
    """A ValueError unless the net's first width is the data's features and its last its classes."""
    if sizes[0] != n_features or sizes[-1] != n_classes:
        raise ValueError(f"sizes {','.join(map(str, sizes))} do not fit {name}: the first width must be its "
                         f"{n_features} input features and the last its {n_classes} classes "
                         f"(e.g. {n_features},1000,{n_classes})")


def train(dataset, cfg: TrainConfig = TrainConfig(), progress: bool = True,
          threads: Optional[int] = None):
    """He-init with cfg.seed, fit on the training images minus a validation split, test; (params, meta)."""
    with threads_limited(threads):
        return _train(dataset, cfg, progress, threads)


def _train(dataset, cfg, progress, threads):
    t0, cpu0 = time.perf_counter(), time.process_time()
    if len(dataset.train_images) == 0 or len(dataset.train_labels) == 0:
        raise ValueError(f"{dataset.name} has no training images")
    X = to_float(dataset.train_images)
    y = np.asarray(dataset.train_labels)
    # the classes: every label of both splits (a test label past the net's outputs failed in evaluate)
    check_sizes(cfg.sizes, X.shape[1], int(max(y.max(), np.max(dataset.test_labels, initial=0))) + 1, dataset.name)
    check_n_val(cfg.n_val, len(X))
    tr_idx, val_idx = split_train_val(len(X), cfg.n_val, cfg.seed)
    params = he_init(cfg.sizes, cfg.bias, cfg.seed)
    params, history = fit(params, X[tr_idx], y[tr_idx], X[val_idx], y[val_idx], cfg,
                          progress=progress)
    test_acc, test_loss = evaluate(params, to_float(dataset.test_images), dataset.test_labels)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    say("", f"{dataset.name} seed {cfg.seed}: test accuracy {test_acc:.4f} (loss {test_loss:.4f}), "
            f"{seconds:.0f} s", progress)
    best = history["best_epoch"] - 1
    meta = {"dataset": dataset.name, "source": getattr(dataset, "source", None), "sizes": list(cfg.sizes),
            "bias": cfg.bias, "seed": cfg.seed, "config": dataclasses.asdict(cfg),
            "data_fingerprint": fingerprint(dataset),
            "config_hash": config_hash(cfg, dataset.name, fingerprint(dataset)), "sparsenet_version": __version__,
            "test_acc": test_acc, "test_loss": test_loss, "val_acc": history["val_acc"][best],
            "val_loss": history["val_loss"][best], "best_epoch": best + 1, "train_seconds": seconds,
            "train_cpu_seconds": cpu_seconds,
            "threads": threads, "history": history}
    return params, meta


def fingerprint(dataset) -> str:
    """The data set's fingerprint (data.Dataset.fingerprint); "" for one that has none."""
    return getattr(dataset, "fingerprint", "") or ""


def config_hash(cfg: TrainConfig, dataset_name: str, data_fingerprint: str = "") -> str:
    """Short hash of every config field, the dataset name, the data's fingerprint and the sparsenet
    version: other files under the same name (say, other labels) get another hash."""
    return short_hash({"config": dataclasses.asdict(cfg), "dataset": dataset_name, "data": data_fingerprint,
                       "version": __version__}, 16)


def cached_train(dataset, cfg: TrainConfig, cache_dir, progress: bool = True,
                 threads: Optional[int] = None):
    """Like train(), but reuse `cache_dir/<dataset>-seed<k>-<hash>.npz` when its config and data match
    (the hash covers the data's fingerprint, not only its name)."""
    from sparsenet import checkpoint

    key = config_hash(cfg, dataset.name, fingerprint(dataset))
    path = Path(cache_dir) / f"{dataset.name}-seed{cfg.seed}-{key}.npz"
    if path.exists():
        try:
            return checkpoint.load(path, expect={"dataset": dataset.name, "config_hash": key,
                                                 "data_fingerprint": fingerprint(dataset),
                                                 "sizes": list(cfg.sizes)})
        except checkpoint.CheckpointError as exc:
            say("", f"retraining: {exc}")
    params, meta = train(dataset, cfg, progress=progress, threads=threads)
    checkpoint.save(path, params, meta)
    return params, meta
