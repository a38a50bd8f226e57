"""Buffers whose shapes are known only after a scikit-learn fit (support vectors, k-NN references).

A freshly built network cannot know how many support vectors or training embeddings a fitted
``model.pt`` holds; :class:`FittedBuffers` lets ``load_state_dict`` take the file's shapes for the
buffers a module names in ``_FITTED``, so every bundle loads its checkpoint the same way.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["FittedBuffers"]


class FittedBuffers(nn.Module):
    """Mixin: the buffers named in ``_FITTED`` are resized to the incoming state dict's before loading."""

    _FITTED: tuple[str, ...] = ()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        for name in self._FITTED:
            incoming = state_dict.get(prefix + name)
            if isinstance(incoming, torch.Tensor) and incoming.shape != self._buffers[name].shape:
                self._buffers[name] = self._buffers[name].new_empty(incoming.shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
