"""Import torchvision when its compiled ops do not load (PyPI's torchvision wheel is a CUDA build,
torch here the CPU one): its fake-op registrations are skipped, so the models (which do not call
nms or roi_align) still build.  Detection heads that call those ops fail to export, and are recorded
as skipped."""

from __future__ import annotations

from typing import Any

import torch


def import_torchvision() -> Any:
    """torchvision, tolerating the missing torchvision::* operators."""
    original = torch.library.register_fake

    def tolerant(*args: Any, **kwargs: Any) -> Any:
        try:
            result = original(*args, **kwargs)
        except RuntimeError:
            return lambda fn: fn
        if callable(result) and len(args) < 2 and "func" not in kwargs:
            def apply(fn: Any) -> Any:
                try:
                    return result(fn)
                except RuntimeError:
                    return fn
            return apply
        return result

    torch.library.register_fake = tolerant
    try:
        import torchvision
    finally:
        torch.library.register_fake = original
    return torchvision
