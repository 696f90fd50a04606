"""ComiRec-SA's speed paths (issue 12 part 2) give eq. (6)'s values and gradients: the sigmoid-based tanh
against ``torch.tanh``, and the per-catalogue-item ``W_1 e`` table (batches holding >= num_items ids)
against eq. (6) written plainly per behaviour here."""
from __future__ import annotations

import pytest
import torch

from models.comirec_sa import ComiRecSA, fast_tanh
from tests.models.conftest import MAX_LEN, NUM_ITEMS, data_hparams, item_categories, make_batch


def test_fast_tanh_values_and_gradient_match_torch_tanh():
    x = torch.cat([torch.linspace(-40, 40, 20001), torch.tensor([0.0, 1e-30, -1e-8])]).requires_grad_(True)
    y = fast_tanh(x)
    ref = torch.tanh(x.detach().double())
    assert (y.detach().double() - ref).abs().max() < 5e-7
    g = torch.randn_like(x)
    y.backward(g)
    assert torch.allclose(x.grad.double(), (1 - ref ** 2) * g.double(), atol=2e-6)
    assert not torch.isnan(y).any() and y.abs().max() <= 1.0


def _plain_attention(model: ComiRecSA, history, mask):
    """Eq. (6) per behaviour: W_2^T tanh(W_1 (e_i + p_t)), padding masked, softmax over behaviours."""
    h = model.items.item.weight[history]  # (B, L, D)
    t = torch.arange(history.shape[1]).unsqueeze(0)
    recency = (mask.sum(1, keepdim=True) - 1 - t).clamp(min=0)
    pre = (h + model.positions.weight[recency]) @ model.w1.weight.T
    scores = torch.tanh(pre) @ model.w2.weight.T
    scores = scores.masked_fill(~mask.unsqueeze(-1), torch.finfo(scores.dtype).min)
    a = torch.softmax(scores, dim=1)
    return torch.einsum("blk,bld->bkd", a, h)


@pytest.mark.parametrize("batch", [2, 8])  # 2 * 8 < NUM_ITEMS ids: per behaviour; 8 * 8 >= NUM_ITEMS: table
def test_interests_and_gradients_match_eq_6_written_plainly(batch):
    torch.manual_seed(0)
    model = ComiRecSA(**data_hparams(), dim=6, num_interests=3, attention_dim=10)
    model.item_category = item_categories()
    history, mask, profile = make_batch(batch=batch, max_len=MAX_LEN, seed=3)
    assert (history.numel() >= NUM_ITEMS) == (batch == 8)
    got, _ = model.user_interests(history, mask, profile)
    weight = torch.randn_like(got)
    (got * weight).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref = _plain_attention(model, history, mask)
    (ref * weight).sum().backward()
    assert torch.allclose(got, ref, atol=1e-5)
    for n, p in model.named_parameters():
        assert torch.allclose(grads[n], p.grad, atol=1e-5), n
    assert grads["items.item.weight"][0].abs().max() == 0  # padding row gets no gradient on either path
