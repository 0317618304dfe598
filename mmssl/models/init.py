"""MAE's weight initialisation (He et al., 2022, `models_mae.py`): xavier-uniform linear layers, unit LayerNorms."""

from torch import nn

__all__ = ["init_mae_"]


def init_mae_(module: nn.Module) -> None:
    """Initialises every Linear (xavier-uniform, zero bias) and LayerNorm (1, 0) inside `module`, in place.

    Patch embeddings here are Linear layers over flattened patches, so MAE's "patch_embed like nn.Linear" rule
    is the same rule. Learned tokens are initialised where they are created (normal, std 0.02).
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
