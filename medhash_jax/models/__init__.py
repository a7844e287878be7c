"""Flax linen models: backbones, attention blocks, hash/class heads, registry.

    from medhash_jax import models
    model = models.get_model("resnet50", num_bits=48, num_classes=14)
    variables = model.init(rng, images)            # {"params", "batch_stats"}
    out = model.apply(variables, images, beta=1.0)  # eval mode
    out["codes_real"], out["logits"], out["features"]
    codes = models.binarize(out["codes_real"])      # sign, with sign(0) = +1

The seed systems: "ath_two_branch" (two views: `model.apply(variables, x,
local_image)`), "mth", "sa_hash" (ath_net.py, mth_net.py, sa_hash_net.py).

Training: `model.apply(variables, x, train=True, beta=beta,
mutable=["batch_stats"])`. Pretrained torchvision/timm weights:
`models.convert.load_pretrained(path)`. See registry.py for every name;
`models.model_spec(name)` says its kind (hashing / classifier), views and
where pretrained backbone weights go.
"""

from medhash_jax.models import attention
from medhash_jax.models import backbones
from medhash_jax.models import convert
from medhash_jax.models import heads
from medhash_jax.models.attention import CBAM
from medhash_jax.models.attention import ConvSelfAttention
from medhash_jax.models.attention import SE
from medhash_jax.models.attention import SpatialAttention
from medhash_jax.models.attention import get_attention
from medhash_jax.models.backbones import DenseNet
from medhash_jax.models.backbones import ResNet
from medhash_jax.models.backbones import canonical_dtype
from medhash_jax.models.backbones import get_backbone
from medhash_jax.models.ath_net import TwoBranchHashNet
from medhash_jax.models.hashing_net import Classifier
from medhash_jax.models.hashing_net import HashingNet
from medhash_jax.models.heads import ClassHead
from medhash_jax.models.heads import FCStack
from medhash_jax.models.heads import HashHead
from medhash_jax.models.mth_net import MTHNet
from medhash_jax.models.sa_hash_net import SAHashNet
from medhash_jax.models.heads import beta_schedule
from medhash_jax.models.heads import binarize
from medhash_jax.models.heads import hashnet_beta
from medhash_jax.models.registry import MODELS
from medhash_jax.models.registry import ModelSpec
from medhash_jax.models.registry import get_model
from medhash_jax.models.registry import is_hash_model
from medhash_jax.models.registry import is_two_view
from medhash_jax.models.registry import model_spec
from medhash_jax.models.registry import pretrained_converter
