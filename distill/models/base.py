"""The common base of zoo models: one forward that serves logits and features."""

from __future__ import annotations

from torch import Tensor, nn

from distill.models.features import FeatureRecord


class ZooModel(nn.Module):
    """A classifier that can also report its intermediate features.

    Subclasses implement :meth:`feature_record`; ``forward`` returns logits, or
    the whole :class:`FeatureRecord` with ``features=True``. Keeping references
    to intermediate tensors costs nothing extra, so both paths run the same code.
    """

    def feature_record(self, x: Tensor) -> FeatureRecord:
        """Run the network on ``x`` and return every tap: maps, pre-activation maps, pooled vector, logits.

        Named apart from timm's ``forward_features`` (which returns the unpooled
        final map) so that a wrapped timm model (:class:`~distill.models.timm_adapter.TimmModel`) has one
        meaning per name.
        """
        raise NotImplementedError

    def feature_modules(self) -> list[nn.Module]:
        """The modules that produce the features (everything but the classifier head).

        The reference's ``get_feat_modules``: two-stage methods (AB, FSP) train
        exactly these in their init stage.
        """
        raise NotImplementedError

    def forward(self, x: Tensor, features: bool = False) -> Tensor | FeatureRecord:
        record = self.feature_record(x)
        return record if features else record.logits
