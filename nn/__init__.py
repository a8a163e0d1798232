"""nn: modules, layers, losses, optimizers, data, training and checkpoints on microtensor's public API.

>>> import numpy as np
>>> import nn
>>> model = nn.TwoLayerNet(2, 8, 2, seed=0)
>>> loss = nn.functional.cross_entropy(model(np.ones((4, 2), dtype=np.float32)), np.array([0, 1, 0, 1]))
>>> loss.backward(); model.fc1.weight.grad.shape
(2, 8)
"""

from nn import data, functional, manual, optim
from nn.checkpoint import CheckpointError, load, save
from nn.layers import Dropout, Linear, LogSoftmax, ReLU, Sigmoid, Tanh
from nn.models import MLP, ThreeLayerNet, TwoLayerNet
from nn.module import Module, Parameter, Sequential, StateDictError
from nn.train import History, evaluate, fit, predict

__all__ = [
    "Module", "Parameter", "Sequential", "StateDictError",
    "Linear", "ReLU", "Sigmoid", "Tanh", "Dropout", "LogSoftmax",
    "TwoLayerNet", "ThreeLayerNet", "MLP", "functional", "optim", "data", "manual",
    "fit", "evaluate", "predict", "History", "save", "load", "CheckpointError",
]
