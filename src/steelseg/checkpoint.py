"""Checkpoint files: atomic writes, weights-only reads with clear errors, and ``ckpt_path=last``.

Lightning's own checkpoint writer serialises to memory, then writes the final file in place (or
through a temporary file in the system temp folder, renamed across file systems), so a kill
during the write can leave a truncated ``last.ckpt`` as the only copy. :class:`AtomicCheckpointIO`
writes next to the target, flushes to disk and renames: a checkpoint file is either the old one
or the new one, never half of one.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain values only, so a
file cannot run code when it is loaded. A checkpoint that needs more is refused with the
remedy (``trust_checkpoint=true`` for ``steelseg-train``, ``weights_only=False`` in Python); a
checkpoint from a stranger is code, load it only if you trust its source.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from steelseg.io import atomic_write, check_space

#: Hyper-parameters that decide the network's layers; a checkpoint only fits a module whose
#: values are equal.
ARCH_KEYS = ("arch", "encoder_name", "in_channels", "arch_kwargs", "classes", "gate")

TRUST_HINT = (
    "load only checkpoints you trust: steelseg-train trust_checkpoint=true, or "
    "SteelSegModule.load_from_checkpoint(path, weights_only=False)"
)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file next to ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    # torch's zip writer aborts the process when a write fails in its destructor: refuse a
    # checkpoint that cannot fit before torch starts writing (tensors, plus 1 MB of the rest)
    check_space(path, tensor_bytes(obj) + (1 << 20))
    atomic_write(path, lambda f: torch.save(obj, f), fsync=True)


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in a nested structure (a checkpoint, a state dict)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def remove_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed :func:`atomic_save` left in ``folder``."""
    folder = Path(folder)
    stale = sorted(folder.glob(".*.ckpt.*.tmp")) if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def load(
    path: str | os.PathLike, map_location: Any = "cpu", weights_only: bool = True
) -> dict[str, Any]:
    """Read a checkpoint file, turning torch's errors into one clear line.

    Args:
        path: A ``.ckpt`` file written by Lightning (or any ``torch.save`` file).
        map_location: As in ``torch.load``.
        weights_only: Refuse anything but tensors and plain values (the safe default).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is truncated, not a checkpoint, or (with ``weights_only``) holds
            objects whose loading could run code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except LOAD_ERRORS as e:
        raise explain(path, e, weights_only) from None


#: What ``torch.load`` raises for unsafe, truncated or foreign files.
LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, OSError)


def explain(path: str | os.PathLike, error: BaseException, weights_only: bool) -> Exception:
    """The one-line error to show for ``error``, raised by ``torch.load(path)``."""
    text = str(error)
    if isinstance(error, FileNotFoundError):
        return FileNotFoundError(f"checkpoint {path} does not exist")
    unsafe = [ln.strip() for ln in text.splitlines() if "Unsupported global" in ln]
    if isinstance(error, pickle.UnpicklingError) and weights_only and unsafe:
        # a real pickle with objects in it; other unpickling errors mean "not a checkpoint"
        reason = unsafe[0]
        return ValueError(
            f"checkpoint {path} holds Python objects besides tensors and plain values, so "
            f"loading it could run code ({reason}); {TRUST_HINT}"
        )
    first = text.splitlines()[0][:200] if text.strip() else type(error).__name__
    if not any(c.isalpha() for c in first):  # e.g. a bare byte code: says nothing to a user
        first = f"{type(error).__name__}: {first}"
    return ValueError(
        f"checkpoint {path} is truncated or not a checkpoint (torch.load: {first}); use "
        "another checkpoint, e.g. the best-*.ckpt next to it"
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that never leaves a partly written checkpoint behind.

    Saving goes through :func:`atomic_save`; loading through :func:`load`, weights-only
    unless the caller passes ``weights_only=False``. Remote paths (``s3://`` and the like) use
    Lightning's own writer.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_save(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, weights_only=weights_only)
        return load(path, map_location or "cpu", weights_only is not False)


def resolve(ckpt_path: str | os.PathLike | None, output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint file a run resumes from.

    Args:
        ckpt_path: None (no resume), a file, or ``"last"``: the newest
            ``*/checkpoints/last.ckpt`` among the run folders next to ``output_dir`` (with the
            default folders, the newest ``outputs/train/runs/*/checkpoints/last.ckpt``).
        output_dir: This run's folder.

    Raises:
        FileNotFoundError: the file, or for ``last`` any run with a last.ckpt, does not exist.
    """
    if ckpt_path is None or str(ckpt_path) == "":
        return None
    if str(ckpt_path) == "last":
        runs = Path(output_dir).parent
        found = sorted(runs.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise FileNotFoundError(
                f"ckpt_path=last: no run in {runs} has checkpoints/last.ckpt; pass the "
                "checkpoint file itself, ckpt_path=/path/to/run/checkpoints/last.ckpt"
            )
        return found[-1]
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path} does not exist; pass a checkpoint file or ckpt_path=last"
        )
    return path


def steelseg_parts(ckpt: Any, path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """The hyper-parameters and state dict of a loaded steelseg checkpoint.

    Raises:
        ValueError: ``ckpt`` was not written by steelseg (e.g. a ``torch.save`` of a plain dict).
    """
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or not {"arch", "encoder_name"} <= set(hp) or state is None:
        raise ValueError(
            f"{path} is not a steelseg checkpoint (no steelseg hyper-parameters and weights); "
            "pass the .ckpt file from a steelseg-train run's checkpoints/ folder"
        )
    return dict(hp), state


def differences(
    saved: Mapping[str, Any], current: Mapping[str, Any], keys: tuple[str, ...]
) -> tuple[str, str] | None:
    """``("arch='unet'", "arch='fpn'")``: the ``keys`` whose values differ, as saved and now;
    None when all are equal (keys the checkpoint lacks are not compared)."""

    def norm(key: str, value: Any) -> Any:
        return (
            str(value).lower()
            if key == "arch"
            else (value or {})
            if key == "arch_kwargs"
            else value
        )

    differ = [k for k in keys if k in saved and norm(k, saved[k]) != norm(k, current.get(k))]
    if not differ:
        return None
    was = ", ".join(f"{k}={saved[k]!r}" for k in differ)
    return was, ", ".join(f"{k}={current.get(k)!r}" for k in differ)


def require_same(
    saved: Mapping[str, Any], current: Mapping[str, Any], keys: Sequence[str], where: str, fix: str
) -> None:
    """Raise ``ValueError`` in one line, ending with ``fix``, when ``keys`` of the checkpoint's
    hyper-parameters differ from the model's (see :func:`differences`)."""
    differ = differences(saved, current, keys)
    if differ:
        was, now = differ
        raise ValueError(f"{where} was trained with {was}, but this model has {now}; {fix}")


def check_compatible(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    state: Mapping[str, Any],
    own: Mapping[str, torch.Tensor],
    where: str = "checkpoint",
) -> None:
    """Raise ``ValueError`` in one line when a checkpoint cannot fill a module.

    Args:
        saved: The checkpoint's hyper-parameters.
        current: The module's hyper-parameters.
        state: The checkpoint's state dict.
        own: The module's state dict.
        where: Names the checkpoint in the message.
    """
    require_same(
        saved,
        current,
        ARCH_KEYS,
        where,
        "use the settings it was trained with (e.g. the same model=/encoder= overrides) or "
        "another checkpoint",
    )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        k
        for k in own
        if k in state
        and hasattr(state[k], "shape")
        and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{len(v)} {what} (e.g. {v[0]})"
            for what, v in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("of another shape", shapes),
            )
            if v
        ]
        raise ValueError(
            f"{where} does not fit this model: weights {', '.join(parts)}; it was made for "
            "another architecture or by another program"
        )


#: ``state_dict`` prefixes of the network's heads, sized by ``classes`` (and ``gate``): left
#: re-initialised when a checkpoint starts a model with another class count or gate.
HEADS = ("net.segmentation_head.", "net.classification_head.")
HEAD_KEYS = {"classes": 1, "gate": False}  # the hyper-parameters sizing them, with defaults
#: Hyper-parameters that must be equal for a checkpoint to start a model (the heads may differ).
BODY_KEYS = ("arch", "encoder_name", "in_channels", "arch_kwargs")


def transferable(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    state: Mapping[str, Any],
    own: Mapping[str, torch.Tensor],
    where: str = "checkpoint",
) -> tuple[dict[str, Any], list[str]]:
    """The tensors of a checkpoint that can start a model, as smp's
    ``from_pretrained(classes=N, strict=False)`` does: every tensor whose name and shape match;
    the heads (:data:`HEADS`) stay re-initialised when the class count or the gate differs.

    Args:
        saved: The checkpoint's hyper-parameters.
        current: The model's hyper-parameters.
        state: The checkpoint's state dict.
        own: The model's state dict.
        where: Names the checkpoint in the messages.

    Returns:
        The tensors to load (``load_state_dict(strict=False)``), and what stays re-initialised,
        e.g. ``["segmentation_head (classes 1 -> 3)"]``.

    Raises:
        ValueError: another architecture, encoder, in_channels or arch_kwargs; a tensor outside
            the heads that is missing or of another shape; or no tensor in common at all.
    """
    require_same(
        saved,
        current,
        BODY_KEYS,
        where,
        "start from a checkpoint of the same network (only model.classes and model.gate may "
        "differ), or train with its settings (e.g. the same model=/encoder=/model.in_channels "
        "overrides)",
    )
    fits = {
        k: v
        for k, v in state.items()
        if k in own and hasattr(v, "shape") and tuple(v.shape) == tuple(own[k].shape)
    }
    if not fits:
        raise ValueError(
            f"{where} holds no weights of this network (e.g. {next(iter(state), 'none')}); "
            "it was made by another program: pass a steelseg-train checkpoint"
        )
    body = [k for k in own if k not in fits and not k.startswith(HEADS)]
    if body:
        raise ValueError(
            f"{where} does not fit this network: {len(body)} weights outside the heads are "
            f"missing or of another shape (e.g. {body[0]}); start from a checkpoint of the same "
            "network"
        )
    was, now = ({k: hp.get(k, d) for k, d in HEAD_KEYS.items()} for hp in (saved, current))
    key = "classes" if was["classes"] != now["classes"] else "gate"
    change = f"{key} {was[key]} -> {now[key]}"
    kept = [
        f"{prefix[4:-1]} ({change})"  # net.segmentation_head. -> segmentation_head
        for prefix in HEADS
        if any(k.startswith(prefix) and k not in fits for k in own)
    ]
    return fits, kept
