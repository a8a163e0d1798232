"""Parameters and modules: the containers a network is built from, as in ``torch.nn``.

A :class:`Module` registers every :class:`Parameter` and sub-module assigned to one of
its attributes, in assignment order, so ``named_parameters()`` can walk the network and
give dotted names such as ``"fc1.weight"``. Calling a module runs its ``forward`` inside
``mt.scope(name)``, so ops it records are tagged with where they ran.

>>> import numpy as np
>>> class Affine(Module):
...     def __init__(self):
...         super().__init__()
...         self.w = Parameter(np.ones(2))
...     def forward(self, x):
...         return x * self.w
>>> [name for name, _ in Affine().named_parameters()]
['w']
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

import microtensor as mt

_scope_state = mt.scope.state  # this thread's scope names, as mt.scope keeps them


class Parameter(mt.Tensor):
    """A Tensor that a Module registers as trainable; it always requires grad.

    >>> w = Parameter([1.0, 2.0], name="w")
    >>> w.requires_grad, w.name
    (True, 'w')
    """

    __slots__ = ()

    def __init__(self, data: Any, name: str | None = None) -> None:
        super().__init__(data, requires_grad=True, name=name)

    def __repr__(self) -> str:
        return "Parameter" + super().__repr__()[len("Tensor"):]


def clear_grads(parameters: Iterable[mt.Tensor], set_to_none: bool = True) -> None:
    """``.grad = None`` for each parameter, or zeros in place (``set_to_none=False``), as in PyTorch.

    >>> w = Parameter([1.0]); w.grad = np.array([2.0]); clear_grads([w], set_to_none=False); w.grad
    array([0.])
    """
    if set_to_none:  # every training step: the plain loop
        for p in parameters:
            p.grad = None
        return
    for p in parameters:
        if p.grad is None:
            continue
        if isinstance(p.grad, np.ndarray):
            p.grad[...] = 0  # in place: whoever holds the array sees the zeros, as in PyTorch
        else:  # a Tensor from backward(create_graph=True): PyTorch detaches it, then zeroes it
            p.grad = np.zeros(p.shape, p.dtype)


class StateDictError(ValueError):
    """A state dict does not fit the module: missing or extra keys, wrong shapes or dtypes.

    ``problems`` lists each mismatch as a short phrase; the message joins them.
    """

    def __init__(self, where: str, problems: list[str]) -> None:
        super().__init__(f"{where}: " + "; ".join(problems))
        self.problems = problems


class Module:
    """Base class of layers and networks: holds parameters and sub-modules, runs ``forward``.

    >>> class Scale(Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.s = Parameter([2.0])
    ...     def forward(self, x):
    ...         return x * self.s
    >>> Scale()(mt.Tensor([3.0])).data
    array([6.])
    """

    training: bool

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_scope_name", type(self).__name__)  # ops it runs are tagged with this
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        registry = self.__dict__
        if "_parameters" not in registry:
            raise AttributeError(
                f"{type(self).__name__}: cannot assign {name!r} before Module.__init__() ran; "
                f"call super().__init__() first in {type(self).__name__}.__init__"
            )
        parameters, modules = registry["_parameters"], registry["_modules"]
        if name in parameters and not (value is None or isinstance(value, Parameter)):
            raise TypeError(f"{type(self).__name__}: cannot assign a {type(value).__name__} to parameter "
                            f"{name!r}; assign an nn.Parameter (or None), or change .data in place")
        parameters.pop(name, None)
        modules.pop(name, None)
        if isinstance(value, Parameter):
            parameters[name] = value
        elif isinstance(value, Module):
            modules[name] = value
            # Ops run in this child are tagged with the name its parent knows it by.
            object.__setattr__(value, "_scope_name", name)
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        object.__delattr__(self, name)

    # -- running ----------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The computation; subclasses override it. Call the module, not ``forward``."""
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # mt.scope(name), entered by hand: a with block would cost more than the rest of the call.
        outer = _scope_state.current
        _scope_state.current = outer + (self._scope_name,)
        try:
            return self.forward(*args, **kwargs)
        finally:
            _scope_state.current = outer

    # -- walking the tree -------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """Every module in the tree, pre-order, self first under the name ``prefix`` (``""``).

        >>> [name for name, _ in Sequential(Sequential(Module())).named_modules()]
        ['', '0', '0.0']
        """
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        """Every module in the tree, pre-order, self first."""
        for _, module in self.named_modules():
            yield module

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """The direct sub-modules with the attribute names they were assigned to."""
        yield from self._modules.items()

    def children(self) -> Iterator[Module]:
        """The direct sub-modules, in assignment order.

        >>> [type(m).__name__ for m in Sequential(Module(), Module()).children()]
        ['Module', 'Module']
        """
        yield from self._modules.values()

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        """``(dotted name, parameter)`` for every parameter in the tree, each once.

        >>> class Holder(Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = Parameter([1.0])
        >>> [name for name, _ in Sequential(Holder()).named_parameters()]
        ['0.w']
        """
        seen: set[int] = set()
        for module_name, module in self.named_modules():
            for name, parameter in module._parameters.items():
                if id(parameter) not in seen:  # a shared parameter is trained once
                    seen.add(id(parameter))
                    yield (f"{module_name}.{name}" if module_name else name), parameter

    def parameters(self) -> Iterator[Parameter]:
        """Every parameter in the tree, each once, in ``named_parameters()`` order."""
        for _, parameter in self.named_parameters():
            yield parameter

    # -- training state ---------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget every parameter's gradient (``.grad`` becomes None), or with ``set_to_none=False``
        zero each gradient array in place, as in PyTorch."""
        clear_grads(self.parameters(), set_to_none)

    def train(self, mode: bool = True) -> Module:
        """Set ``.training`` on this module and all below it (Dropout obeys it); returns self.

        >>> Sequential(Module()).eval().train().training
        True
        """
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self) -> Module:
        """Switch to evaluation mode (``train(False)``); returns self."""
        return self.train(False)

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of every parameter's array, keyed by dotted name.

        >>> class Holder(Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = Parameter([1.0])
        >>> Holder().state_dict()
        {'w': array([1.])}
        """
        return {name: parameter.data.copy() for name, parameter in self.named_parameters()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Copy ``state`` into the parameters, in place, after checking it fits exactly.

        Missing or unexpected keys, a wrong shape or a wrong dtype raise
        :class:`StateDictError` listing every problem, and nothing is changed.

        >>> class Holder(Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = Parameter([1.0])
        >>> m = Holder(); m.load_state_dict({"w": np.array([5.0])}); m.w.data
        array([5.])
        """
        arrays = self._checked_state(state)
        read_only = [name for name, p in self.named_parameters() if not p.data.flags.writeable]
        if read_only:  # found before copying anything, so that nothing is half loaded
            raise ValueError(f"{type(self).__name__}.load_state_dict: parameters {read_only} hold read-only "
                             f"arrays (such as np.load(mmap_mode='r') gives), which cannot be loaded in "
                             f"place; nothing was changed. Give them writable copies first: "
                             f"p.data = p.data.copy()")
        for name, parameter in self.named_parameters():
            data = parameter.data
            np.copyto(data, arrays[name])
            parameter.data = data  # marks the change for the tape, as an optimizer step does

    def _checked_state(self, state: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(state, Mapping):
            raise TypeError(f"{type(self).__name__}.load_state_dict: expected a mapping of parameter "
                            f"names to arrays (as state_dict() returns), got a {type(state).__name__}")
        own = dict(self.named_parameters())
        problems = []
        missing = [name for name in own if name not in state]
        unexpected = [repr(name) for name in state if name not in own]
        if missing:
            problems.append(f"missing keys {missing}")
        if unexpected:
            problems.append(f"unexpected keys [{', '.join(unexpected)}]")
        arrays = {}
        for name, parameter in own.items():
            if name not in state:
                continue
            value = np.asarray(state[name])
            if value.shape != parameter.shape:
                problems.append(f"{name!r} has shape {value.shape}, expected {parameter.shape}")
            elif value.dtype != parameter.dtype:
                problems.append(f"{name!r} has dtype {value.dtype}, expected {parameter.dtype}")
            arrays[name] = value
        if problems:
            raise StateDictError(f"{type(self).__name__}.load_state_dict", problems)
        return arrays

    # -- display ----------------------------------------------------------------------------
    def extra_repr(self) -> str:
        """The module's own settings, shown inside its ``repr``; subclasses override it."""
        return ""

    def __repr__(self) -> str:
        lines = [f"({name}): " + repr(child).replace("\n", "\n  ") for name, child in self._modules.items()]
        if not lines:
            return f"{type(self).__name__}({self.extra_repr()})"
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"


class Sequential(Module):
    """Modules applied one after another; registered as ``"0"``, ``"1"``, ...

    >>> from nn.layers import Linear, ReLU
    >>> net = Sequential(Linear(3, 4, seed=0), ReLU(), Linear(4, 2, seed=1))
    >>> net(np.ones((5, 3), dtype=np.float32)).shape
    (5, 2)
    >>> [name for name, _ in net.named_parameters()]
    ['0.weight', '0.bias', '2.weight', '2.bias']
    """

    def __init__(self, *layers: Module) -> None:
        super().__init__()
        for index, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(
                    f"Sequential: argument {index} is a {type(layer).__name__}, not a Module"
                )
            setattr(self, str(index), layer)

    def forward(self, x: Any) -> Any:
        for layer in self._modules.values():
            x = layer(x)
        return x

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())
