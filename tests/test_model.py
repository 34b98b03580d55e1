"""model.py: gradients against finite differences, stable softmax, batched evaluation."""
import numpy as np
import pytest

from sparsenet.model import (Layer, evaluate, forward, he_init, layer_sizes, log_softmax,
                             loss_and_grads, predict)

SIZES = (6, 5, 4, 3)


def _float64(params):
    return tuple(Layer(l.weight.astype(np.float64), None if l.bias is None else l.bias.astype(np.float64))
                 for l in params)


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_gradients_match_finite_differences(bias):
    rng = np.random.default_rng(0)
    params = _float64(he_init(SIZES, bias=bias, seed=3))
    if bias:                       # non-zero biases, so their gradient path is exercised
        params = tuple(Layer(l.weight, rng.standard_normal(l.bias.shape) * 0.1) for l in params)
    X = rng.standard_normal((7, SIZES[0]))
    y = rng.integers(0, SIZES[-1], 7)
    loss, grads = loss_and_grads(params, X, y)
    assert np.isfinite(loss)
    h = 1e-6
    for li, (layer, grad) in enumerate(zip(params, grads)):
        for name in ("weight", "bias"):
            p, g = getattr(layer, name), getattr(grad, name)
            if p is None:
                assert g is None
                continue
            assert g.shape == p.shape
            num = np.zeros_like(p)
            for idx in np.ndindex(p.shape):
                old = p[idx]
                p[idx] = old + h
                up = loss_and_grads(params, X, y)[0]
                p[idx] = old - h
                down = loss_and_grads(params, X, y)[0]
                p[idx] = old
                num[idx] = (up - down) / (2 * h)
            np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-8, err_msg=f"layer {li} {name}")


def test_loss_is_cross_entropy_of_forward():
    params = he_init(SIZES, seed=1)
    X = np.random.default_rng(1).random((9, SIZES[0]), dtype=np.float32)
    y = np.arange(9) % SIZES[-1]
    logits = forward(params, X).astype(np.float64)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert loss_and_grads(params, X, y)[0] == pytest.approx(-np.log(p[np.arange(9), y]).mean(), rel=1e-5)


def test_log_softmax_is_stable():
    logits = np.array([[1000.0, 0.0, -1000.0], [-5e4, -5e4, -5e4]])
    out = log_softmax(logits)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0, 0], 0.0, atol=1e-12)
    np.testing.assert_allclose(out[1], np.log(1 / 3))


def test_evaluate_and_predict_in_batches():
    params = he_init(SIZES, bias=True, seed=2)
    rng = np.random.default_rng(2)
    X = rng.random((50, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], 50)
    logits = forward(params, X)
    np.testing.assert_array_equal(predict(params, X, batch=7), logits.argmax(1))
    acc, loss = evaluate(params, X, y, batch=7)
    assert acc == pytest.approx((logits.argmax(1) == y).mean())
    assert loss == pytest.approx(loss_and_grads(params, X, y)[0], rel=1e-5)
    assert evaluate(params, X, y, batch=1000) == pytest.approx((acc, loss), rel=1e-6)


def test_bad_labels_are_rejected():
    params = he_init(SIZES)
    X = np.zeros((2, SIZES[0]), np.float32)
    with pytest.raises(ValueError, match="labels"):
        loss_and_grads(params, X, np.array([0, SIZES[-1]]))
    with pytest.raises(ValueError, match="shape"):
        evaluate(params, X, np.array([0]))


def test_he_init_and_sizes():
    params = he_init((784, 1000, 10), bias=True, seed=0)
    assert layer_sizes(params) == (784, 1000, 10)
    assert params[0].weight.dtype == np.float32 and params[0].weight.shape == (1000, 784)
    assert np.std(params[0].weight) == pytest.approx(np.sqrt(2 / 784), rel=0.02)
    assert not params[0].bias.any()


def test_activation_sparsity():
    from sparsenet.model import activation_sparsity
    W0 = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]], np.float32)        # (3, 2): unit 1 never fires
    params = (Layer(W0, None), Layer(np.ones((1, 3), np.float32), None))
    X = np.array([[1, 0], [0, 0], [2, 0], [-1, 0]], np.float32)
    # batch 1: input 1 always zero (1/2) and input 0 zero in 1 of 4 rows -> (4 + 1) / 8
    # hidden: unit 0 fires for rows 0, 2; unit 1 for row 3; unit 2 never -> zeros (2 + 3 + 4) / 12
    assert activation_sparsity(params, X) == [5 / 8, 9 / 12]
    # batch 2: (rows 0-1, rows 2-3): input 0 live in both, input 1 dead in both -> 1/2; hidden: units 1, 2
    # dead in the first pair, unit 2 in the second -> 3/6
    assert activation_sparsity(params, X, batch=2) == [0.5, 3 / 6]
    with pytest.raises(ValueError, match="need X of shape"):
        activation_sparsity(params, X, batch=5)
