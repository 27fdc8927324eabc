"""Forward hooks, cleanly: record what named modules output, and check that no hook is left.

:func:`capture_outputs` / :func:`capture_stages` register one forward hook per module for the
length of a ``with`` block and always remove them, even after an error inside it.
:func:`hooks_left` lists the hooks still registered on a model, to check that nothing leaked
(a leaked hook keeps recording, and holding tensors, on every later forward pass).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager

from torch import Tensor, nn

from course_utils.models import FEATURE_MAP_MODULES

__all__ = ["capture_outputs", "capture_stages", "hooks_left"]

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


@contextmanager
def capture_outputs(
    modules: Mapping[str, nn.Module], *, detach: bool = True
) -> Iterator[dict[str, Tensor]]:
    """Inside the ``with`` block, each forward pass stores every module's output under its key.

    Yields the dict that fills up (a module that runs more than once keeps its last output).
    ``detach=False`` keeps the outputs in the autograd graph, e.g. to take gradients with respect
    to them. The hooks are removed when the block ends, however it ends.
    """
    outputs: dict[str, Tensor] = {}

    def recorder(key: str) -> Callable[[nn.Module, object, Tensor], None]:
        def record(module: nn.Module, inputs: object, output: Tensor) -> None:
            outputs[key] = output.detach() if detach else output

        return record

    handles = []
    try:
        for key, module in modules.items():
            handles.append(module.register_forward_hook(recorder(key)))
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def capture_stages(
    model: nn.Module, names: Sequence[str] = FEATURE_MAP_MODULES, *, detach: bool = True
) -> AbstractContextManager[dict[str, Tensor]]:
    """:func:`capture_outputs` of ``model``'s submodules by qualified name (e.g. ``"layer4.2"``).

    The default records the feature map that ends each stage: ``maxpool`` (the stem), then
    ``layer1`` .. ``layer4``. An unknown name raises ``AttributeError`` before any hook is set.
    """
    return capture_outputs({name: model.get_submodule(name) for name in names}, detach=detach)


def hooks_left(model: nn.Module) -> dict[str, int]:
    """Forward and backward hooks still registered on any module of ``model`` (name -> count)."""
    counts = {}
    for name, module in model.named_modules():
        count = sum(len(getattr(module, attr, {})) for attr in _HOOK_DICTS)
        if count:
            counts[name or "(model)"] = count
    return counts
