"""A hand-written backward pass for the two-layer network, in the notebooks' style.

Check it against the tape with:  microtensor check --manual docs/examples/two_layer_backward.py
"""

import numpy as np


def backward(weights, X, y, reg):
    W1, b1, W2, b2 = weights["W1"], weights["b1"], weights["W2"], weights["b2"]
    n = X.shape[0]
    z1 = X @ W1 + b1
    h1 = np.maximum(0, z1)
    scores = h1 @ W2 + b2
    probs = np.exp(scores - scores.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)

    dscores = probs.copy()
    dscores[np.arange(n), y] -= 1
    dscores /= n
    dW2 = h1.T @ dscores + reg * W2
    db2 = dscores.sum(axis=0)
    dh1 = dscores @ W2.T
    dz1 = dh1 * (z1 > 0)
    dW1 = X.T @ dz1 + reg * W1
    db1 = dz1.sum(axis=0)
    return {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2, "scores": dscores, "h1": dh1, "z1": dz1}
