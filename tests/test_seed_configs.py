"""Issue #21: the seed systems' configs default to the papers' forms."""

from configs import ath as ath_cfg
from configs import mth as mth_cfg
from configs import sa_hash as sa_cfg


def test_mth_defaults_are_the_papers():
  """Catches: MTH back on random-batch mining or the pairwise L_s."""
  for arg in (None, "smoke"):
    c = mth_cfg.get_config(arg)
    assert c.data.sampling == "triplet"
    assert c.loss.kwargs.semantic == "projection"


def test_ath_loss_is_eq10_sum_and_reports_ndcg_all():
  """Catches: reduction back to the pair mean, or nDCG@ALL dropped."""
  for arg in (None, "smoke"):
    c = ath_cfg.get_config(arg)
    assert c.loss.kwargs.reduction == "sum"
    assert None in tuple(c.eval.ks)


def test_sa_hash_no_hflip_and_decays_everything():
  """Catches: chest X-rays flipped left-right at paper scale, or biases /
  BatchNorm excluded from weight decay unlike the paper's PyTorch code."""
  c = sa_cfg.get_config()
  assert c.data.augment.hflip is False
  assert c.optim.decay_bias_and_norm is True
