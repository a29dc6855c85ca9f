"""Dynamic int8 inference on CPU: torch's int8 Linear kernels under a layer that peft can still wrap with LoRA.

bitsandbytes' 8-bit layers are slower than float32 for inference on CPU; torch's dynamic quantization (int8 weights,
activations quantized per call) takes ~0.6x float32's time on long files, at some cost in WER, so it is opt-in
(``benchmarks/bench_longform.py`` and ``bench_short.py`` with ``--quantize none,dynamic``).
"""

from __future__ import annotations

import warnings

import torch
from torch.ao.nn.quantized.dynamic import Linear as _QLinear
from torch.ao.quantization import per_channel_dynamic_qconfig


class DynamicInt8Linear(torch.nn.Linear):
    """A frozen ``nn.Linear`` whose forward runs torch's dynamic int8 kernel.

    Written by hand because peft cannot wrap torch's own dynamic-quantized module (it is not an ``nn.Linear``, so
    LoRA refuses it as a target). This subclass keeps the float weight and bias as ordinary parameters, so peft wraps
    it like any Linear and reads its weight (device, dtype, scaling), while the forward delegates to
    ``torch.ao.nn.quantized.dynamic.Linear`` built once from the float layer. The float weight must not change after
    that: a merged adapter goes into a merged copy that is quantized afresh (``dynamic_int8``).
    """

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> DynamicInt8Linear:
        new = cls.__new__(cls)
        torch.nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight, new.bias = linear.weight, linear.bias  # shared: tied weights (proj_out) stay tied
        linear.qconfig = per_channel_dynamic_qconfig  # one scale per output row, as CTranslate2 int8
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # torch.ao.quantization's notice that it moves to torchao
            q = _QLinear.from_float(linear)
        del linear.qconfig
        # not a submodule: state_dict, named_modules and peft's target matching see only the float layer
        object.__setattr__(new, "_int8", q)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise RuntimeError("DynamicInt8Linear runs on CPU only")
        if x.requires_grad:
            raise RuntimeError("DynamicInt8Linear is for inference: the int8 kernel has no backward")
        return self._int8(x.float()).to(x.dtype)


def dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Swap every plain ``nn.Linear`` of ``model`` for a ``DynamicInt8Linear``, in place; returns the model.

    LoRA layers already inside (lora_A / lora_B of a peft model) are ``nn.Linear`` too: call this on the base before
    wrapping it, or on a merged copy (``merge_and_unload``), which has none.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(parent, name, DynamicInt8Linear.from_linear(child))
    return model
