"""Every model honours docs/CONTRACTS.md "Batches and the model interface": shapes, build/save/load,
deterministic and traceable ``user_interests`` in eval mode, gradients reaching every parameter."""
from __future__ import annotations

import warnings

import pytest
import torch

import models
from components.config import ParamsError
from components.io import DataError
from models.loss import sampled_softmax_loss
from tests.models.conftest import MAX_LEN, NUM_ITEMS, data_hparams, item_categories, make_batch

NEURAL = {
    "umi": dict(dim=8, num_interests=3, routing_iters=3, profile_dim=3, attention_hidden=5, hidden_dim=7),
    "comirec_dr": dict(dim=8, num_interests=3, routing_iters=3),
    "comirec_sa": dict(dim=8, num_interests=3, attention_dim=12),
    "mind": dict(dim=8, num_interests=4, routing_iters=3, profile_dim=3, hidden_dim=16),
    "youtube_dnn": dict(dim=8, profile_dim=3, hidden_dim=16),
}
ALL = {"most_popular": {}, **NEURAL}


def _build(arch, profile=(3, 4)):
    model = models.build_model(arch, **data_hparams(list(profile)), **ALL[arch])
    models.set_item_category(model, item_categories())
    if arch == "most_popular":
        model.fit_counts(torch.arange(NUM_ITEMS))
    return model


@pytest.mark.parametrize("arch", sorted(ALL))
@pytest.mark.parametrize("profile", [(3, 4), ()])
def test_shapes_and_protocol(arch, profile):
    model = _build(arch, profile).eval()
    assert isinstance(model, models.RetrievalModel)
    history, mask, prof = make_batch(profile=list(profile))
    interests, imask = model.user_interests(history, mask, prof)
    B = history.shape[0]
    assert interests.dim() == 3 and interests.shape[0] == B and imask.shape == interests.shape[:2]
    assert imask.dtype == torch.bool and imask.any(1).all()
    items = model.item_embeddings(torch.arange(NUM_ITEMS))
    assert items.shape == (NUM_ITEMS, interests.shape[2])
    assert torch.isfinite(interests).all() and torch.isfinite(items).all()


@pytest.mark.parametrize("arch", sorted(ALL))
def test_trace_matches_eager_on_other_inputs(arch):
    model = _build(arch).eval()
    example = make_batch(batch=3, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(_UserTower(model), example, check_trace=False)
    tracer = [str(w.message) for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    assert not tracer, tracer  # no Python branching on tensor values
    # other batch sizes, lengths, masks and a shorter padded length L than the trace example
    for seed, lengths, L in [(2, [1, 8, 3, 5, 2], 8), (3, [8, 8], 8), (4, [2, 1, 1, 5, 4, 3, 3], 5)]:
        batch = make_batch(lengths=lengths, seed=seed, max_len=L)
        eager = model.user_interests(*batch)
        got = traced(*batch)
        assert torch.equal(got[1], eager[1])
        assert torch.allclose(got[0], eager[0], atol=1e-6)


class _UserTower(torch.nn.Module):
    """What serving exports: ``user_interests`` as ``forward`` (for torch.jit.trace)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, history, mask, profile):
        return self.model.user_interests(history, mask, profile)


@pytest.mark.parametrize("arch", sorted(ALL))
def test_eval_is_deterministic_and_save_load_round_trip(arch, tmp_path):
    model = _build(arch).eval()
    batch = make_batch(batch=6, seed=5)
    a = model.user_interests(*batch)
    b = model.user_interests(*batch)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    path = tmp_path / "m" / "model.pt"
    models.save_model(model, path, {"epoch": 3, "metrics": {"recall@50": 0.25}})
    loaded, extra = models.load_model(path, with_extra=True)
    assert extra == {"epoch": 3, "metrics": {"recall@50": 0.25}}
    assert type(loaded) is type(model) and not loaded.training
    c = loaded.user_interests(*batch)
    assert torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])
    ids = torch.arange(NUM_ITEMS)
    assert torch.equal(model.item_embeddings(ids), loaded.item_embeddings(ids))
    assert torch.equal(loaded.item_category, model.item_category)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left behind


@pytest.mark.parametrize("arch", sorted(NEURAL))
def test_gradients_reach_every_parameter(arch):
    model = _build(arch).train()
    history, mask, prof = make_batch(batch=16, seed=7)
    pos = torch.randint(1, NUM_ITEMS, (16,))
    neg = torch.arange(1, NUM_ITEMS)
    interests, imask = model.user_interests(history, mask, prof)
    loss = sampled_softmax_loss(interests, imask, pos, model.item_embeddings(pos), neg, model.item_embeddings(neg),
                                attention_pow=None, harder_negatives=True)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_build_model_rejects_bad_hparams():
    with pytest.raises(ParamsError, match="'dimm'"):
        models.build_model("youtube_dnn", **data_hparams(), dimm=8)
    with pytest.raises(ParamsError, match="unknown model 'mlp'"):
        models.build_model("mlp", **data_hparams())
    with pytest.raises(ParamsError, match="num_items"):
        models.build_model("youtube_dnn", num_categories=3, max_len=4)
    with pytest.raises(ParamsError, match="dim must be >= 1"):
        models.build_model("youtube_dnn", **data_hparams(), dim=0)


def test_set_item_category_checks(tmp_path):
    model = _build("youtube_dnn")
    with pytest.raises(ValueError, match="shape"):
        models.set_item_category(model, torch.zeros(3, dtype=torch.long))
    bad = item_categories()
    bad[4] = 99
    with pytest.raises(ValueError, match="values"):
        models.set_item_category(model, bad)
    with pytest.raises(DataError, match="not found"):
        models.load_model(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(DataError, match="junk.pt"):
        models.load_model(tmp_path / "junk.pt")


def test_most_popular_scores_are_train_counts():
    model = _build("most_popular").eval()
    counts = torch.randint(0, 100, (NUM_ITEMS,))
    model.fit_counts(counts)
    interests, imask = model.user_interests(*make_batch())
    assert torch.equal(interests, torch.ones_like(interests)) and imask.all()
    scores = torch.einsum("bkd,nd->bkn", interests, model.item_embeddings(torch.arange(NUM_ITEMS)))[:, 0]
    expected = counts.float().clone()
    expected[0] = 0
    assert torch.equal(scores, expected.expand_as(scores))
    assert not models.is_trainable(model) and models.is_trainable(_build("youtube_dnn"))


def test_youtube_dnn_mean_pools_masked_behaviours():
    model = _build("youtube_dnn").eval()
    history, mask, prof = make_batch(lengths=[3, 5], seed=2)
    a = model.user_interests(history, mask, prof)[0]
    # padding positions hold arbitrary ids: they must not change the output
    noisy = history.clone()
    noisy[~mask] = 7
    b = model.user_interests(noisy, mask, prof)[0]
    assert torch.allclose(a, b)
    # permuting behaviours does not change a mean
    perm = history.clone()
    perm[0, :3] = history[0, [2, 0, 1]]
    assert torch.allclose(a, model.user_interests(perm, mask, prof)[0], atol=1e-6)


@pytest.mark.parametrize("arch", sorted(NEURAL))
def test_a_few_adam_steps_fit_a_tiny_batch(arch):
    model = _build(arch).train()
    history, mask, prof = make_batch(batch=16, seed=8)
    pos = history[:, 0]  # predict the first behaviour: learnable from the history
    neg = torch.arange(1, NUM_ITEMS)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)

    def loss_fn():
        interests, imask = model.user_interests(history, mask, prof)
        return sampled_softmax_loss(interests, imask, pos, model.item_embeddings(pos), neg,
                                    model.item_embeddings(neg), attention_pow=None, harder_negatives=False)

    first = float(loss_fn())
    for _ in range(40):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert float(loss_fn()) < 0.5 * first, (first, float(loss_fn()))


@pytest.mark.parametrize("arch", ["mind", "comirec_dr", "comirec_sa", "umi"])
def test_coupling_coefficients_follow_history_positions(arch):
    model = _build(arch).eval()
    history, mask, prof = make_batch(lengths=[3, 8, 5], seed=9)
    w = model.coupling_coefficients(history, mask, prof)
    assert w.shape == (3, model.config["num_interests"], history.shape[1])
    assert (w.permute(0, 2, 1)[~mask] == 0).all()
    # reversing the real behaviours reverses the columns (routing models: coupling is per item, not per slot)
    if arch in ("mind", "umi"):
        rev = history.clone()
        for b in range(3):
            n = int(mask[b].sum())
            rev[b, :n] = history[b, :n].flip(0)
        w_rev = model.coupling_coefficients(rev, mask, prof)
        for b in range(3):
            n = int(mask[b].sum())
            assert torch.allclose(w_rev[b, :, :n], w[b, :, :n].flip(-1), atol=1e-5)
    if arch == "comirec_dr":  # mapped back from newest-first order
        c = model.capsules(history, mask)[1]
        assert torch.allclose(w[0, :, :3], c[0, :, :3].flip(-1))


@pytest.mark.parametrize("use_category", [True, False])
def test_item_tower_table_path_equals_per_id_average(use_category):
    """Looking many ids up in the per-item table (the average computed once per item) gives the values and
    gradients of averaging per id (MIND §3.2), and padding row 0 still gets no gradient."""
    from models.youtube_dnn import ItemTower

    tower = ItemTower(NUM_ITEMS, 5, 6, use_category)
    tower.item_category.copy_(item_categories())
    history, _, _ = make_batch(batch=9, seed=2)  # 9 * MAX_LEN ids >= NUM_ITEMS: the table path
    assert tower.uses_table(history) is use_category
    g = torch.randn(*history.shape, 6, generator=torch.Generator().manual_seed(1))
    out = []
    for fast in (True, False):
        tower.zero_grad()
        if fast:
            e = tower(history)
        else:
            e = tower.item(history)
            if use_category:
                e = (e + tower.category(tower.item_category[history])) / 2
        (e * g).sum().backward()
        grads = [tower.item.weight.grad.clone()] + ([tower.category.weight.grad.clone()] if use_category else [])
        out.append((e.detach(), *grads))
    for a, b in zip(*out):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-6)
    assert (out[0][1][0] == 0).all() and out[0][1].abs().sum() > 0
    if use_category:
        assert (out[0][2][0] == 0).all() and out[0][2].abs().sum() > 0


@pytest.mark.parametrize("use_category", [True, False])
@pytest.mark.parametrize("batch", [2, 9])  # 2 * MAX_LEN < NUM_ITEMS: per-id path; 9: table + embedding_bag
def test_youtube_dnn_embedding_bag_equals_masked_mean(use_category, batch):
    """YouTube DNN's pooling (embedding_bag with mask weights) equals the plain masked mean of the item
    embeddings, values and gradients of every parameter."""
    model = models.build_model("youtube_dnn", **data_hparams(), **{**ALL["youtube_dnn"], "use_category": use_category})
    models.set_item_category(model, item_categories())
    model.train()
    history, mask, prof = make_batch(batch=batch, seed=3)
    mask[0, 0] = False  # a masked real item must not count either (mask, not history != 0, decides)
    target = torch.randn(batch, 1, 8, generator=torch.Generator().manual_seed(2))
    out = []
    for fast in (True, False):
        model.zero_grad()
        if fast:
            user, _ = model.user_interests(history, mask, prof)
        else:
            e = model.items.item(history)
            if use_category:
                e = (e + model.items.category(model.items.item_category[history])) / 2
            m = mask.unsqueeze(-1).float()
            pooled = (e * m).sum(1) / m.sum(1).clamp(min=1.0)
            user = model.mlp(torch.cat([pooled, model.profile(prof)], dim=-1)).unsqueeze(1)
        (user * target).sum().backward()
        out.append([user.detach()] + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*out):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
