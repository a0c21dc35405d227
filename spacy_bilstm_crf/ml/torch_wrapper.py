"""thinc's PyTorch wrapper, with weights loaded without unpickling and parameter averages used.

thinc's default loader calls `torch.load` without `weights_only`, which unpickles arbitrary
objects on torch before 2.6, or whenever `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` is set: a crafted
pipeline could run code when loaded. Here `weights_only=True` is always passed (an explicit
value is never overridden by that variable), so only tensors come back, and anything else in
the bytes is a clear error.

thinc's shim keeps the optimizer's moving averages of the torch parameters under the keys
`(shim id, parameter name)`, but its `use_params` looks for `"pytorch_{id}_{name}"`, so
with `use_averages = true` spaCy evaluated and saved the torch module's raw weights while the
thinc layers got their averages. `AveragingShim.use_params` reads the keys that are written.
"""

import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from typing import Any

import torch
from thinc.api import Model, PyTorchShim, PyTorchWrapper_v3, xp2torch


class WeightsError(ValueError):
    """Saved weights that hold objects other than tensors, or that do not fit the module."""


def torch_wrapper(
    module: torch.nn.Module,
    convert_inputs: Callable | None = None,
    convert_outputs: Callable | None = None,
) -> Model:
    """`PyTorchWrapper_v3` around `module`, with the safe loader and `AveragingShim`."""
    wrapper = PyTorchWrapper_v3(
        module,
        convert_inputs=convert_inputs,
        convert_outputs=convert_outputs,
        deserialize_model=load_weights,
    )
    wrapper.shims[0] = AveragingShim(
        module, device=wrapper.shims[0].device, deserialize_model=load_weights
    )
    return wrapper


class AveragingShim(PyTorchShim):
    """thinc's PyTorch shim, whose `use_params` finds the averages its `finish_update` keeps."""

    @contextmanager
    def use_params(self, params: dict) -> Iterator[None]:
        """The module's parameters set to `params[(self.id, name)]` where given, inside."""
        state = {
            name: xp2torch(params[(self.id, name)], device=self.device)
            for name, _ in self._model.named_parameters()
            if (self.id, name) in params
        }
        if not state:
            yield
            return
        parameters = dict(self._model.named_parameters())
        backup = {name: parameters[name].detach().clone() for name in state}
        self._model.load_state_dict(state, strict=False)
        try:
            yield
        finally:
            self._model.load_state_dict(backup, strict=False)


def load_weights(module: torch.nn.Module, data: bytes, device: torch.device) -> Any:
    """Load a state dict saved by `torch.save` into `module`, on `device`."""
    try:
        state = torch.load(BytesIO(data), map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise WeightsError(
            "The pipeline's model weights hold something other than tensors, so they were not "
            "loaded (only weights are ever unpickled). Load pipelines only from sources you "
            f"trust. torch said: {str(err).splitlines()[0]}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError("The pipeline's model weights are not a dict of tensors.")
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise WeightsError(
            "The saved weights do not fit the model built from the config (a setting that "
            f"shapes the model differs from the one it was trained with): {err}"
        ) from None
    return module.to(device)
