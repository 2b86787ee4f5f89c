"""The conv graph a model declares, so that learngenes can address its layers by name.

Each model lists its conv layers as ``ConvNode``s: where the layer's ``ConvBN`` lives in the
params tree, its output width, and which layer feeds it. That is all the learngene needs to know
a layer's gene block takes the gene channels of its input and owns the first
``k = round(r * C)`` of its own.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ConvNode:
    """One conv+BN layer of a model.

    Attributes:
      name: readable name, the module path joined by '/', e.g. ``"stage2/conv1"``.
      channels: number of output channels C.
      input: name of the layer whose output this layer reads, or None for the image.
      stage: index of the resolution stage (1-based), used to map layers between depths.
    """

    name: str
    channels: int
    input: str | None
    stage: int

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.name.split("/"))
