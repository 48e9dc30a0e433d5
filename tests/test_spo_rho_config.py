"""spo.rho and train.prob_mask_rho (issue 28): SPO-chain whitens its segment advantages over the cutpoints
(p < spo.rho) when the probability mask is on, so the mask (p_old < train.prob_mask_rho) must select the
same tokens. Unequal values are rejected at config load, naming both keys."""

import pytest

from configs.loader import ConfigError, resolve


def test_spo_chain_rejects_a_mask_rho_unequal_to_spo_rho():
    with pytest.raises(ConfigError, match=r"spo\.rho=0\.8 differs from train\.prob_mask_rho=0\.9"):
        resolve("spo_chain", overrides=["spo.rho=0.8"])
    with pytest.raises(ConfigError, match=r"spo\.rho=0\.9 differs from train\.prob_mask_rho=0\.5"):
        resolve("spo_chain", overrides=["train.prob_mask_rho=0.5"])


def test_spo_chain_accepts_equal_values_or_no_mask():
    cfg = resolve("spo_chain", overrides=["spo.rho=0.8", "train.prob_mask_rho=0.8"])
    assert cfg.spo.rho == cfg.train.prob_mask_rho == 0.8
    # Without the mask the whitening weighs every token, whatever spo.rho cuts at.
    assert resolve("spo_chain", overrides=["spo.rho=0.8", "train.prob_mask_rho=null"]).train.prob_mask_rho is None


@pytest.mark.parametrize("preset", ["grpo_mask", "spo_tree"])
def test_spo_rho_is_unused_outside_spo_chain(preset):
    # GRPO with the mask and SPO-tree never make cutpoints: spo.rho is not read, so it may differ.
    cfg = resolve(preset, overrides=["spo.rho=0.5"])
    assert cfg.spo.rho == 0.5 and cfg.train.prob_mask_rho == 0.9
