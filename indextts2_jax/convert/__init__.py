"""Reading official checkpoints and mapping PyTorch state dicts to Flax params."""

from indextts2_jax.convert.state_dict import (  # noqa: F401
    StateDict,
    check_params_match,
    fold_weight_norm,
    load_safetensors,
    load_torch_checkpoint,
)
