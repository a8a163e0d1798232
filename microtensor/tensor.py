"""The Tensor a user touches: an ndarray, its gradient, and the op that made it."""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

_NOT_DIFFERENTIABLE_KINDS = {"b": "bool", "i": "integer", "u": "unsigned integer",
                             "c": "complex", "O": "object", "U": "string", "S": "bytes",
                             "M": "datetime", "m": "timedelta", "V": "void"}


def _check_differentiable_dtype(dtype: np.dtype, where: str) -> None:
    if dtype.kind != "f":
        kind = _NOT_DIFFERENTIABLE_KINDS.get(dtype.kind, dtype.kind)
        raise TypeError(
            f"{where}: only floating-point tensors can require gradients, got dtype "
            f"{dtype} ({kind}); convert first, e.g. Tensor(data, dtype=np.float64, "
            f"requires_grad=True)"
        )


class Tensor:
    """An n-dimensional array that records the ops applied to it, for reverse-mode autodiff.

    >>> x = Tensor([1.0, 2.0, 3.0], requires_grad=True, name="x")
    >>> (x * x).sum().backward(); x.grad
    array([2., 4., 6.])
    """

    # _shares_with: weak references to every tensor made on this one's array (detach, Tensor(t)),
    # this one included, one list shared by them all; unset on tensors the ops make.
    __slots__ = ("_data", "grad", "requires_grad", "name", "_node", "_retains_grad", "_modified_at",
                 "_shares_with", "__weakref__")
    # Make NumPy hand `ndarray + tensor` to Tensor.__radd__ instead of looping over it.
    __array_ufunc__ = None

    def __init__(
        self,
        data: Any,
        requires_grad: bool = False,
        dtype: Any = None,
        name: str | None = None,
    ) -> None:
        source = data if isinstance(data, Tensor) else None
        if source is not None:
            data = source._data
        try:
            self._data = np.asarray(data, dtype=dtype)
        except (TypeError, ValueError) as err:
            raise TypeError(f"Tensor: cannot make an array of {type(data).__name__}: {err}") from None
        # A change made in place through either tensor changes the other too (see the .data setter).
        self._shares_with = _share(source, self) if source is not None and self._data is data else None
        if requires_grad:
            _check_differentiable_dtype(self._data.dtype, "Tensor")
        self.requires_grad = bool(requires_grad)
        self.grad: Any = None
        self.name = name
        self._node = None
        self._retains_grad = False
        self._modified_at = -1

    # -- what it is -------------------------------------------------------------------
    @property
    def data(self) -> np.ndarray:
        """The ndarray. Assigning to it, including in place (``t.data -= lr * t.grad``),
        marks the tensor as modified, so a backward that needs its old value refuses to run.
        """
        return self._data

    @data.setter
    def data(self, value: Any) -> None:
        if value is not self._data:  # `t.data -= x` assigns the same, updated, array back
            value = np.asarray(value)
            if self.requires_grad:
                _check_differentiable_dtype(value.dtype, "Tensor.data")
            self._data = value
        self._modified_at = position = autograd.change_position()
        try:  # (an optimizer's step assigns every weight: an attribute read costs less than getattr)
            sharing = self._shares_with
        except AttributeError:  # a tensor an op made, never detached: it shares with nothing
            return
        if sharing:  # `w.detach().data -= 1` changes w, and the other way round
            for reference in sharing:
                other = reference()
                if other is not None and other._data is value:
                    other._modified_at = position

    @property
    def shape(self) -> tuple[int, ...]:
        return self._data.shape

    @property
    def ndim(self) -> int:
        return self._data.ndim

    @property
    def size(self) -> int:
        return self._data.size

    @property
    def dtype(self) -> np.dtype:
        return self._data.dtype

    @property
    def is_leaf(self) -> bool:
        """True for tensors the user made; False for outputs of recorded ops."""
        return self._node is None

    @property
    def T(self) -> Tensor:
        return ops.transpose(self)

    def __repr__(self) -> str:
        body = np.array2string(self.data, separator=", ", prefix="Tensor(")
        extras = ""
        if self.dtype != np.float64 and self.dtype.kind == "f":
            extras += f", dtype={self.dtype}"
        if self._node is not None:
            extras += f", op={self._node.op.name}"
        elif self.requires_grad:
            extras += ", requires_grad=True"
        if self.name:
            extras += f", name={self.name!r}"
        return f"Tensor({body}{extras})"

    def __len__(self) -> int:
        return len(self.data)

    def __bool__(self) -> bool:
        return bool(self.data)

    def __float__(self) -> float:
        return float(self.data)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if copy is False and dtype is not None and np.dtype(dtype) != self._data.dtype:
            raise ValueError(f"Tensor: a copy is needed to make {self.dtype} data {np.dtype(dtype)}, "
                             f"and copy=False forbids one")
        array = self._data if dtype is None else self._data.astype(dtype, copy=False)
        # np.array(t) and np.copy(t) ask for a copy and trust they got one.
        return array.copy() if copy and array is self._data else array

    # Comparisons return Tensors, so identity hashing has to be restored explicitly.
    __hash__ = object.__hash__

    # -- conversions ------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """The underlying ndarray (shared, not copied)."""
        return self.data

    def item(self) -> Any:
        """The value of a one-element tensor as a Python number."""
        return self.data.item()

    def detach(self) -> Tensor:
        """A new leaf sharing this data, cut off from the graph.

        Changing the ``.data`` of either in place changes both, and is detected as such:
        a backward that needs the old value refuses to run.
        """
        return Tensor(self, name=self.name)

    def named(self, name: str) -> Tensor:
        """Set ``.name`` and return the tensor, to name intermediates inline.

        >>> h = (Tensor([1.0, -1.0], requires_grad=True) * 2).relu().named("h")
        >>> h.name
        'h'
        """
        self.name = name
        return self

    def astype(self, dtype: Any) -> Tensor:
        """A differentiable cast to another floating dtype.

        >>> Tensor([1.0], requires_grad=True).astype(np.float32).dtype
        dtype('float32')
        """
        dtype = np.dtype(dtype)
        if self.requires_grad:  # a cast to or from a non-floating dtype would lose the gradient
            _check_differentiable_dtype(self.dtype, "Tensor.astype")
            _check_differentiable_dtype(dtype, "Tensor.astype")
        return ops.astype(self, dtype=dtype)

    # -- gradients --------------------------------------------------------------------
    def zero_grad(self) -> None:
        """Forget the accumulated gradient (``.grad`` becomes None)."""
        self.grad = None

    def retain_grad(self) -> Tensor:
        """Keep ``.grad`` on this intermediate after backward, as leaves do."""
        if self._node is not None:
            self._retains_grad = True
        return self

    def backward(
        self,
        gradient: Any = None,
        retain_graph: bool | None = None,
        create_graph: bool = False,
    ) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad`` by replaying the tape.

        ``gradient`` is the upstream gradient (required unless self has one element).
        The graph is released unless ``retain_graph`` (default: ``create_graph``).
        With ``create_graph=True`` the leaves' ``.grad`` are Tensors with a graph.

        >>> w = Tensor([3.0], requires_grad=True)
        >>> (w ** 2).sum().backward(); w.grad
        array([6.])
        """
        autograd.run_backward([self], [gradient], retain_graph, create_graph)

    # -- operators --------------------------------------------------------------------
    def __add__(self, other: Any) -> Tensor:
        return ops.add(self, other)

    def __radd__(self, other: Any) -> Tensor:
        return ops.add(other, self)

    def __sub__(self, other: Any) -> Tensor:
        return ops.sub(self, other)

    def __rsub__(self, other: Any) -> Tensor:
        return ops.sub(other, self)

    def __mul__(self, other: Any) -> Tensor:
        return ops.mul(self, other)

    def __rmul__(self, other: Any) -> Tensor:
        return ops.mul(other, self)

    def __truediv__(self, other: Any) -> Tensor:
        return ops.div(self, other)

    def __rtruediv__(self, other: Any) -> Tensor:
        return ops.div(other, self)

    def __pow__(self, other: Any) -> Tensor:
        return ops.pow(self, other)

    def __rpow__(self, other: Any) -> Tensor:
        return ops.pow(other, self)

    def __matmul__(self, other: Any) -> Tensor:
        return ops.matmul(self, other)

    def __rmatmul__(self, other: Any) -> Tensor:
        return ops.matmul(other, self)

    def __neg__(self) -> Tensor:
        return ops.neg(self)

    def __getitem__(self, index: Any) -> Tensor:
        return ops.getitem(self, index=_index_arrays(index))

    def __gt__(self, other: Any) -> Tensor:
        return ops.greater(self, other)

    def __lt__(self, other: Any) -> Tensor:
        return ops.less(self, other)

    def __ge__(self, other: Any) -> Tensor:
        return ops.greater_equal(self, other)

    def __le__(self, other: Any) -> Tensor:
        return ops.less_equal(self, other)

    def __eq__(self, other: Any) -> Tensor:  # type: ignore[override]
        return ops.equal(self, other)

    def __ne__(self, other: Any) -> Tensor:  # type: ignore[override]
        return ops.not_equal(self, other)

    # -- methods ----------------------------------------------------------------------
    def matmul(self, other: Any) -> Tensor:
        return ops.matmul(self, other)

    def relu(self) -> Tensor:
        return ops.relu(self)

    def sigmoid(self) -> Tensor:
        return ops.sigmoid(self)

    def tanh(self) -> Tensor:
        return ops.tanh(self)

    def exp(self) -> Tensor:
        return ops.exp(self)

    def log(self) -> Tensor:
        return ops.log(self)

    def log_softmax(self, axis: int = -1) -> Tensor:
        return ops.log_softmax(self, axis=axis)

    def softmax(self, axis: int = -1) -> Tensor:
        return ops.softmax(self, axis=axis)

    def sum(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        return ops.sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        return ops.mean(self, axis=axis, keepdims=keepdims)

    def max(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        return ops.max(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape: Any) -> Tensor:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return ops.reshape(self, shape=shape)

    def transpose(self, *axes: Any) -> Tensor:
        if len(axes) == 1 and (axes[0] is None or isinstance(axes[0], (tuple, list))):
            axes = axes[0]
        return ops.transpose(self, axes=tuple(axes) if axes else None)


def _share(source: Tensor, tensor: Tensor) -> list[weakref.ref]:
    """The list of weak references to the tensors on ``source``'s array, ``tensor`` now among them.

    Weak, so that a detached loss kept for logging does not keep its graph alive.
    """
    try:
        sharing = source._shares_with
    except AttributeError:
        sharing = None
    if sharing is None:
        sharing = source._shares_with = [weakref.ref(source)]
    sharing[:] = [reference for reference in sharing if reference() is not None]
    sharing.append(weakref.ref(tensor))
    return sharing


def _index_arrays(index: Any) -> Any:
    """Indices may hold Tensors (e.g. labels); NumPy needs their arrays."""
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index


# The op table and the tape build on Tensor, so they are bound after it exists.
from microtensor import autograd, ops  # noqa: E402
