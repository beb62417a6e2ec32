"""Standard ONNX ops (opset 13 and up) as torch functions, with ONNX's semantics: broadcasting,
negative indices and axes, integer division truncating, clamped slices, asymmetric pads.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from greencc.lowering.dtypes import INTEGER_DTYPES, as_list, ints, torch_dtype
from greencc.lowering.registry import converts

# -- elementwise -------------------------------------------------------------------------

_UNARY = {
    "Abs": torch.abs, "Neg": torch.neg, "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log,
    "Tanh": torch.tanh, "Sigmoid": torch.sigmoid, "Relu": torch.relu, "Erf": torch.erf,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Sin": torch.sin,
    "Cos": torch.cos, "Sign": torch.sign, "Round": torch.round, "Not": torch.logical_not,
    "IsNaN": torch.isnan, "Softplus": F.softplus, "Softsign": F.softsign, "Mish": F.mish,
    "Tan": torch.tan, "Atan": torch.atan, "Asin": torch.asin, "Acos": torch.acos,
    "Sinh": torch.sinh, "Cosh": torch.cosh,
}
_BINARY = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "And": torch.logical_and,
    "Or": torch.logical_or, "Xor": torch.logical_xor, "Equal": torch.eq, "Greater": torch.gt,
    "Less": torch.lt, "GreaterOrEqual": torch.ge, "LessOrEqual": torch.le,
    "BitwiseAnd": torch.bitwise_and, "BitwiseOr": torch.bitwise_or,
}


def _unary(fn: Any) -> Any:
    def convert(x: torch.Tensor) -> torch.Tensor:
        return fn(x)

    convert.__name__ = f"onnx_{fn.__name__}"
    return convert


def _binary(fn: Any) -> Any:
    def convert(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return fn(a, b)

    convert.__name__ = f"onnx_{fn.__name__}"
    return convert


for _op, _fn in _UNARY.items():
    converts(_op)(_unary(_fn))
for _op, _fn in _BINARY.items():
    converts(_op)(_binary(_fn))


@converts("Identity")
def identity(x: torch.Tensor) -> torch.Tensor:
    return x


@converts("Dropout")
def dropout(x: torch.Tensor, ratio: Any = None, training_mode: Any = None, *, outputs: int = 1,
            seed: int = 0) -> Any:
    # Inference semantics: greencc lowers graphs to run or to fine-tune them, never to
    # re-apply the exporter's dropout.
    if outputs == 1:
        return x
    return x, torch.ones_like(x, dtype=torch.bool)


@converts("Div")
def div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype in INTEGER_DTYPES:
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


@converts("Mod")
def mod(a: torch.Tensor, b: torch.Tensor, *, fmod: int = 0) -> torch.Tensor:
    return torch.fmod(a, b) if fmod else torch.remainder(a, b)


@converts("Pow")
def pow_(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.pow(a, b).to(a.dtype)


@converts("IsInf")
def is_inf(x: torch.Tensor, *, detect_negative: int = 1, detect_positive: int = 1) -> torch.Tensor:
    positive = (x == math.inf) if detect_positive else torch.zeros_like(x, dtype=torch.bool)
    negative = (x == -math.inf) if detect_negative else torch.zeros_like(x, dtype=torch.bool)
    return positive | negative


def _variadic(fn: Any) -> Any:
    def convert(*xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out

    convert.__name__ = f"onnx_variadic_{fn.__name__}"
    return convert


converts("Max")(_variadic(torch.maximum))
converts("Min")(_variadic(torch.minimum))
converts("Sum")(_variadic(torch.add))


@converts("Mean")
def mean(*xs: torch.Tensor) -> torch.Tensor:
    return _variadic(torch.add)(*xs) / len(xs)


@converts("Where")
def where(condition: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.where(condition, x, y)


@converts("Clip")
def clip(x: torch.Tensor, low: torch.Tensor | None = None, high: torch.Tensor | None = None) -> torch.Tensor:
    if low is not None:
        x = torch.maximum(x, low.to(x.dtype))
    if high is not None:
        x = torch.minimum(x, high.to(x.dtype))
    return x


@converts("Cast")
def cast(x: torch.Tensor, *, to: int, saturate: int = 1, round_mode: str = "up") -> torch.Tensor:
    dtype = torch_dtype(to)
    if dtype == torch.bool:
        return x != 0
    return x.to(dtype)


@converts("CastLike")
def cast_like(x: torch.Tensor, like: torch.Tensor, *, saturate: int = 1, round_mode: str = "up") -> torch.Tensor:
    return x.to(like.dtype)


# -- activations ---------------------------------------------------------------------------

@converts("Gelu")
def gelu(x: torch.Tensor, *, approximate: str = "none") -> torch.Tensor:
    return F.gelu(x, approximate="tanh" if approximate == "tanh" else "none")


@converts("LeakyRelu")
def leaky_relu(x: torch.Tensor, *, alpha: float = 0.01) -> torch.Tensor:
    return F.leaky_relu(x, alpha)


@converts("Elu")
def elu(x: torch.Tensor, *, alpha: float = 1.0) -> torch.Tensor:
    return F.elu(x, alpha)


@converts("HardSigmoid")
def hard_sigmoid(x: torch.Tensor, *, alpha: float = 0.2, beta: float = 0.5) -> torch.Tensor:
    return torch.clamp(alpha * x + beta, 0.0, 1.0)


@converts("HardSwish")
def hard_swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.clamp(x / 6.0 + 0.5, 0.0, 1.0)


@converts("PRelu")
def prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    return torch.where(x < 0, x * slope, x)


@converts("Softmax")
def softmax(x: torch.Tensor, *, axis: int = -1) -> torch.Tensor:
    return torch.softmax(x, axis)


@converts("LogSoftmax")
def log_softmax(x: torch.Tensor, *, axis: int = -1) -> torch.Tensor:
    return torch.log_softmax(x, axis)


# -- normalization ---------------------------------------------------------------------------

@converts("LayerNormalization")
def layer_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None, *,
               axis: int = -1, epsilon: float = 1e-5, stash_type: int = 1, outputs: int = 1) -> Any:
    axis = axis % x.dim()
    if outputs == 1:
        return F.layer_norm(x, tuple(x.shape[axis:]), scale, bias, epsilon)
    dims = tuple(range(axis, x.dim()))
    mean_ = x.mean(dims, keepdim=True)
    inv_std = torch.rsqrt(((x - mean_) ** 2).mean(dims, keepdim=True) + epsilon)
    y = (x - mean_) * inv_std * scale
    if bias is not None:
        y = y + bias
    return (y, mean_, inv_std)[:outputs]


@converts("RMSNormalization")
def rms_norm(x: torch.Tensor, scale: torch.Tensor, *, axis: int = -1, epsilon: float = 1e-5,
             stash_type: int = 1) -> torch.Tensor:
    dims = tuple(range(axis % x.dim(), x.dim()))
    return x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + epsilon) * scale


@converts("BatchNormalization")
def batch_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, mean_: torch.Tensor,
               var: torch.Tensor, *, epsilon: float = 1e-5, momentum: float = 0.9,
               training_mode: int = 0) -> torch.Tensor:
    return F.batch_norm(x, mean_, var, scale, bias, False, 0.0, epsilon)


# -- linear algebra and convolution ---------------------------------------------------------------

@converts("MatMul")
def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a, b)


@converts("Gemm")
def gemm(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None, *, alpha: float = 1.0,
         beta: float = 1.0, transA: int = 0, transB: int = 0) -> torch.Tensor:
    a = a.t() if transA else a
    b = b.t() if transB else b
    y = torch.matmul(a, b)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return y


@converts("Einsum")
def einsum(*xs: torch.Tensor, equation: str) -> torch.Tensor:
    return torch.einsum(equation, *xs)


def conv_padding(x: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int],
                 pads: list[int] | None, auto_pad: str) -> list[int]:
    """ONNX pads ``[x1_begin, x2_begin, ..., x1_end, x2_end]`` with ``auto_pad`` resolved."""
    spatial = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        resolved_begin, resolved_end = [], []
        for i in range(spatial):
            size = x.shape[2 + i]
            out = -(-size // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
            small, large = total // 2, total - total // 2
            resolved_begin.append(small if auto_pad == "SAME_UPPER" else large)
            resolved_end.append(large if auto_pad == "SAME_UPPER" else small)
        return resolved_begin + resolved_end
    if auto_pad == "VALID" or pads is None:
        return [0] * (2 * spatial)
    return list(pads)


def _torch_pad(pads: list[int]) -> list[int]:
    """ONNX ``[b1, b2, .., e1, e2, ..]`` as F.pad's ``[b_last, e_last, ..., b1, e1]``."""
    spatial = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(spatial)):
        out += [pads[i], pads[i + spatial]]
    return out


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@converts("Conv")
def conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, *, auto_pad: str = "NOTSET",
         dilations: list[int] | None = None, group: int = 1, kernel_shape: list[int] | None = None,
         pads: list[int] | None = None, strides: list[int] | None = None) -> torch.Tensor:
    spatial = w.dim() - 2
    kernel = list(kernel_shape or w.shape[2:])
    strides = list(strides or [1] * spatial)
    dilations = list(dilations or [1] * spatial)
    padding = conv_padding(x, kernel, strides, dilations, pads, auto_pad)
    if padding[:spatial] == padding[spatial:]:
        return _CONV[spatial](x, w, b, strides, padding[:spatial], dilations, group)
    return _CONV[spatial](F.pad(x, _torch_pad(padding)), w, b, strides, 0, dilations, group)


@converts("ConvTranspose")
def conv_transpose(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, *,
                   auto_pad: str = "NOTSET", dilations: list[int] | None = None, group: int = 1,
                   kernel_shape: list[int] | None = None, output_padding: list[int] | None = None,
                   output_shape: list[int] | None = None, pads: list[int] | None = None,
                   strides: list[int] | None = None) -> torch.Tensor:
    spatial = w.dim() - 2
    strides = list(strides or [1] * spatial)
    dilations = list(dilations or [1] * spatial)
    pads = list(pads or [0] * (2 * spatial))
    if pads[:spatial] != pads[spatial:] or output_shape is not None or auto_pad not in ("NOTSET", "VALID"):
        raise NotImplementedError("ConvTranspose with asymmetric pads, output_shape or auto_pad SAME")
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[spatial]
    return fn(x, w, b, strides, pads[:spatial], list(output_padding or [0] * spatial), group, dilations)


def _pool_pads(x: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int],
               pads: list[int] | None, auto_pad: str) -> list[int]:
    return conv_padding(x, kernel, strides, dilations, pads, auto_pad)


@converts("MaxPool")
def max_pool(x: torch.Tensor, *, kernel_shape: list[int], auto_pad: str = "NOTSET", ceil_mode: int = 0,
             dilations: list[int] | None = None, pads: list[int] | None = None, storage_order: int = 0,
             strides: list[int] | None = None, outputs: int = 1) -> Any:
    spatial = len(kernel_shape)
    strides = list(strides or [1] * spatial)
    dilations = list(dilations or [1] * spatial)
    padding = _pool_pads(x, kernel_shape, strides, dilations, pads, auto_pad)
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[spatial]
    if padding[:spatial] != padding[spatial:]:
        x = F.pad(x, _torch_pad(padding), value=-math.inf)
        padding = [0] * (2 * spatial)
    if outputs > 1:
        raise NotImplementedError("MaxPool's Indices output")
    return fn(x, kernel_shape, strides, padding[:spatial], dilations, bool(ceil_mode))


@converts("AveragePool")
def average_pool(x: torch.Tensor, *, kernel_shape: list[int], auto_pad: str = "NOTSET", ceil_mode: int = 0,
                 count_include_pad: int = 0, dilations: list[int] | None = None,
                 pads: list[int] | None = None, strides: list[int] | None = None) -> torch.Tensor:
    spatial = len(kernel_shape)
    strides = list(strides or [1] * spatial)
    padding = _pool_pads(x, kernel_shape, strides, [1] * spatial, pads, auto_pad)
    if padding[:spatial] != padding[spatial:]:
        raise NotImplementedError("AveragePool with asymmetric pads")
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[spatial]
    return fn(x, kernel_shape, strides, padding[:spatial], bool(ceil_mode), bool(count_include_pad))


@converts("GlobalAveragePool")
def global_average_pool(x: torch.Tensor) -> torch.Tensor:
    return x.mean(tuple(range(2, x.dim())), keepdim=True)


@converts("GlobalMaxPool")
def global_max_pool(x: torch.Tensor) -> torch.Tensor:
    return x.amax(tuple(range(2, x.dim())), keepdim=True)


# -- reductions ------------------------------------------------------------------------------

def _reduce(fn: Any) -> Any:
    def convert(x: torch.Tensor, axes_input: Any = None, *, axes: list[int] | None = None,
                keepdims: int = 1, noop_with_empty_axes: int = 0) -> torch.Tensor:
        chosen = as_list(axes_input) if axes_input is not None else axes
        if not chosen:
            if noop_with_empty_axes:
                return x
            chosen = list(range(x.dim()))
        return fn(x, [a % x.dim() for a in chosen], bool(keepdims))

    convert.__name__ = f"onnx_reduce_{fn.__name__}"
    return convert


def _sum(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    return torch.sum(x, dims, keepdim=keep)


def _mean(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    return torch.mean(x, dims, keepdim=keep)


def _max(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    return torch.amax(x, dims, keepdim=keep)


def _min(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    return torch.amin(x, dims, keepdim=keep)


def _prod(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    for d in sorted(dims, reverse=True):
        x = torch.prod(x, d, keepdim=keep)
    return x


def _sum_square(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    return torch.sum(x * x, dims, keepdim=keep)


def _l2(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    return torch.sqrt(torch.sum(x * x, dims, keepdim=keep))


def _log_sum_exp(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    return torch.logsumexp(x, dims, keepdim=keep)


for _op, _fn in {"ReduceSum": _sum, "ReduceMean": _mean, "ReduceMax": _max, "ReduceMin": _min,
                 "ReduceProd": _prod, "ReduceSumSquare": _sum_square, "ReduceL2": _l2,
                 "ReduceLogSumExp": _log_sum_exp}.items():
    converts(_op, int_inputs=(1,))(_reduce(_fn))


@converts("ArgMax")
def arg_max(x: torch.Tensor, *, axis: int = 0, keepdims: int = 1, select_last_index: int = 0) -> torch.Tensor:
    if select_last_index:
        flipped = torch.argmax(x.flip(axis), axis, keepdim=bool(keepdims))
        return x.shape[axis] - 1 - flipped
    return torch.argmax(x, axis, keepdim=bool(keepdims))


@converts("ArgMin")
def arg_min(x: torch.Tensor, *, axis: int = 0, keepdims: int = 1, select_last_index: int = 0) -> torch.Tensor:
    if select_last_index:
        flipped = torch.argmin(x.flip(axis), axis, keepdim=bool(keepdims))
        return x.shape[axis] - 1 - flipped
    return torch.argmin(x, axis, keepdim=bool(keepdims))


@converts("CumSum", int_inputs=(1,))
def cumsum(x: torch.Tensor, axis: Any, *, exclusive: int = 0, reverse: int = 0) -> torch.Tensor:
    dim = int(as_list(axis)[0]) % x.dim()
    if reverse:
        x = x.flip(dim)
    y = torch.cumsum(x, dim).to(x.dtype)
    if exclusive:
        y = y - x
    return y.flip(dim) if reverse else y


@converts("TopK", int_inputs=(1,))
def top_k(x: torch.Tensor, k: Any, *, axis: int = -1, largest: int = 1, sorted: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    values, indices = torch.topk(x, int(as_list(k)[0]), axis, bool(largest), bool(sorted))
    return values, indices


# -- shape and layout ---------------------------------------------------------------------------

@converts("Shape")
def shape(x: torch.Tensor, *, start: int = 0, end: int | None = None) -> list[Any]:
    return list(x.shape)[start:end]


@converts("Size")
def size(x: torch.Tensor) -> Any:
    return x.numel()


@converts("Reshape", int_inputs=(1,))
def reshape(x: torch.Tensor, target: Any, *, allowzero: int = 0) -> torch.Tensor:
    dims = as_list(target)
    if not allowzero:
        dims = [x.shape[i] if isinstance(d, int) and d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


@converts("Flatten")
def flatten(x: torch.Tensor, *, axis: int = 1) -> torch.Tensor:
    axis = axis % x.dim() if axis < 0 else axis
    leading = 1
    for d in x.shape[:axis]:
        leading = leading * d
    return x.reshape(leading, -1)


@converts("Transpose")
def transpose(x: torch.Tensor, *, perm: list[int] | None = None) -> torch.Tensor:
    return x.permute(perm if perm is not None else list(reversed(range(x.dim()))))


@converts("Squeeze", int_inputs=(1,))
def squeeze(x: torch.Tensor, axes: Any = None) -> torch.Tensor:
    chosen = as_list(axes) if axes is not None else None
    if not chosen:
        return torch.squeeze(x)
    for a in sorted((a % x.dim() for a in chosen), reverse=True):
        x = torch.squeeze(x, a)
    return x


@converts("Unsqueeze", int_inputs=(1,))
def unsqueeze(x: torch.Tensor, axes: Any) -> torch.Tensor:
    chosen = as_list(axes)
    rank = x.dim() + len(chosen)
    for a in sorted(a % rank for a in chosen):
        x = torch.unsqueeze(x, a)
    return x


@converts("Concat")
def concat(*xs: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.cat(xs, axis)


@converts("Split", int_inputs=(1,))
def split(x: torch.Tensor, sizes: Any = None, *, axis: int = 0, num_outputs: int | None = None,
          outputs: int = 1, split: list[int] | None = None) -> tuple[torch.Tensor, ...]:
    sizes = sizes if sizes is not None else split
    if sizes is None:
        length = x.shape[axis]
        chunk = -(-length // outputs)
        sizes = [chunk] * (outputs - 1) + [length - chunk * (outputs - 1)]
    return tuple(torch.split(x, as_list(sizes), axis))


@converts("Slice", int_inputs=(1, 2, 3, 4))
def slice_(x: torch.Tensor, starts: Any, ends: Any, axes: Any = None, steps: Any = None) -> torch.Tensor:
    starts, ends = as_list(starts), as_list(ends)
    axes = as_list(axes) if axes is not None else list(range(len(starts)))
    steps = as_list(steps) if steps is not None else [1] * len(starts)
    index: list[Any] = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = axis % x.dim()
        size = x.shape[axis]
        if step > 0:
            lo = max(start + size, 0) if start < 0 else start
            hi = max(end + size, 0) if end < 0 else end
            index[axis] = slice(lo, hi, step)
            continue
        # A negative step: ONNX clamps start to [0, size-1] and end to [-1, size-1].
        lo = start + size if start < 0 else start
        lo = min(max(lo, 0), size - 1)
        hi = end + size if end < 0 else end
        hi = min(max(hi, -1), size - 1)
        indices = torch.arange(lo, hi, step, device=x.device)
        x = torch.index_select(x, axis, indices)
    return x[tuple(index)]


@converts("Expand", int_inputs=(1,))
def expand(x: torch.Tensor, target: Any) -> torch.Tensor:
    dims = as_list(target)
    rank = max(len(dims), x.dim())
    dims = [1] * (rank - len(dims)) + dims
    x = x.reshape([1] * (rank - x.dim()) + list(x.shape))
    out = [x.shape[i] if isinstance(d, int) and d == 1 else d for i, d in enumerate(dims)]
    return x.expand(out)


@converts("Tile", int_inputs=(1,))
def tile(x: torch.Tensor, repeats: Any) -> torch.Tensor:
    return x.repeat(as_list(repeats))


@converts("Pad", int_inputs=(1, 3))
def pad(x: torch.Tensor, pads: Any, constant_value: torch.Tensor | None = None, axes: Any = None, *,
        mode: str = "constant") -> torch.Tensor:
    pads = as_list(pads)
    axes = [a % x.dim() for a in as_list(axes)] if axes is not None else list(range(x.dim()))
    full = [0] * (2 * x.dim())
    half = len(pads) // 2
    for i, axis in enumerate(axes):
        full[axis], full[axis + x.dim()] = pads[i], pads[i + half]
    # F.pad's pads run from the last axis: drop the leading axes that are not padded.
    torch_pads = _torch_pad(full)
    while len(torch_pads) > 2 and torch_pads[-1] == 0 and torch_pads[-2] == 0:
        torch_pads = torch_pads[:-2]
    if mode == "constant":
        value = float(constant_value.item()) if constant_value is not None and constant_value.numel() else 0.0
        return F.pad(x, torch_pads, value=value)
    return F.pad(x, torch_pads, mode={"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode])


@converts("ConstantOfShape", int_inputs=(0,))
def constant_of_shape(target: Any, *, value: tuple[Any, torch.dtype] = (0.0, torch.float32)) -> torch.Tensor:
    fill, dtype = value
    return torch.full(as_list(target), fill[0] if isinstance(fill, list) else fill, dtype=dtype)


@converts("Range", int_inputs=(0, 1, 2))
def range_(start: Any, limit: Any, delta: Any) -> torch.Tensor:
    start, limit, delta = (_scalar(v) for v in (start, limit, delta))
    if any(isinstance(v, float) for v in (start, limit, delta)):
        return torch.arange(start, limit, delta, dtype=torch.float32)
    return torch.arange(start, limit, delta, dtype=torch.int64)


def _scalar(value: Any) -> Any:
    value = ints(value)
    return value[0] if isinstance(value, list) else value


@converts("Trilu", int_inputs=(1,))
def trilu(x: torch.Tensor, k: Any = None, *, upper: int = 1) -> torch.Tensor:
    diagonal = _scalar(k) if k is not None else 0
    return torch.triu(x, diagonal) if upper else torch.tril(x, diagonal)


# -- indexing ---------------------------------------------------------------------------

@converts("Gather")
def gather(data: torch.Tensor, indices: torch.Tensor, *, axis: int = 0) -> torch.Tensor:
    axis = axis % data.dim()
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    if axis == 0:
        return data[indices]
    flat = torch.index_select(data, axis, indices.reshape(-1))
    return flat.reshape(list(data.shape[:axis]) + list(indices.shape) + list(data.shape[axis + 1:]))


@converts("GatherElements")
def gather_elements(data: torch.Tensor, indices: torch.Tensor, *, axis: int = 0) -> torch.Tensor:
    axis = axis % data.dim()
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    return torch.gather(data, axis, indices)


@converts("GatherND")
def gather_nd(data: torch.Tensor, indices: torch.Tensor, *, batch_dims: int = 0) -> torch.Tensor:
    depth = indices.shape[-1]
    batch_shape = list(data.shape[:batch_dims])
    batch = 1
    for d in batch_shape:
        batch = batch * d
    flat_data = data.reshape([batch] + list(data.shape[batch_dims:]))
    flat_indices = indices.reshape([batch, -1, depth])
    dims = flat_data.shape[1:1 + depth]
    coordinates = [torch.where(flat_indices[..., i] < 0, flat_indices[..., i] + dims[i], flat_indices[..., i])
                   for i in range(depth)]
    rows = torch.arange(batch, device=data.device).reshape(batch, 1)
    picked = flat_data[(rows, *coordinates)]
    return picked.reshape(batch_shape + list(indices.shape[batch_dims:-1]) + list(data.shape[batch_dims + depth:]))


@converts("ScatterND")
def scatter_nd(data: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor, *,
               reduction: str = "none") -> torch.Tensor:
    out = data.clone()
    depth = indices.shape[-1]
    coordinates = tuple(indices[..., i] for i in range(depth))
    if reduction == "add":
        return out.index_put(coordinates, updates, accumulate=True)
    return out.index_put(coordinates, updates)


@converts("ScatterElements")
def scatter_elements(data: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor, *, axis: int = 0,
                     reduction: str = "none") -> torch.Tensor:
    axis = axis % data.dim()
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    if reduction == "none":
        return torch.scatter(data, axis, indices, updates)
    return torch.scatter_reduce(data, axis, indices, updates, {"add": "sum", "mul": "prod", "max": "amax",
                                                              "min": "amin"}[reduction])


@converts("NonZero")
def non_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.stack(torch.nonzero(x, as_tuple=True)) if x.dim() else torch.nonzero(x).t()
