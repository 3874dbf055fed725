"""Residual VQ: nearest-code quantisation, straight-through gradient, EMA updates, dead-code restart, k-means init."""

import torch

from tokenizer.vq import ResidualQuantizer, VQEmbedding


def test_quantises_residually_to_nearest_codes():
    torch.manual_seed(0)
    rq = ResidualQuantizer(8, 4, 2)
    z = torch.randn(5, 4, requires_grad=True)
    zq, commit, codes = rq(z)
    b0, b1 = (b.weight[:-1].detach() for b in rq.codebooks)
    c0 = torch.cdist(z.detach(), b0).argmin(1)
    c1 = torch.cdist(z.detach() - b0[c0], b1).argmin(1)
    assert torch.equal(codes, torch.stack([c0, c1], 1))
    torch.testing.assert_close(zq.detach(), b0[c0] + b1[c1])
    torch.testing.assert_close(rq.embed_codes(codes), b0[c0] + b1[c1])
    # Commitment: mean over levels of ||z - sg(cumulative quantisation)||^2.
    expected = ((z - b0[c0]).pow(2).mean() + (z - b0[c0] - b1[c1]).pow(2).mean()) / 2
    torch.testing.assert_close(commit, expected)
    # Straight-through: the gradient reaches z unchanged.
    zq.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))


def test_no_update_outside_training_calls():
    book = VQEmbedding(4, 2)
    before = book.weight.clone()
    book(torch.randn(10, 2))
    assert torch.equal(book.weight, before)


def test_ema_moves_codes_to_their_cluster_means():
    torch.manual_seed(0)
    book = VQEmbedding(2, 2, decay=0.5, dead_code_threshold=0.0)
    with torch.no_grad():
        book.weight[:2] = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
        book.embed_ema.copy_(book.weight[:2])
        book.cluster_size_ema.fill_(1.0)
    x = torch.tensor([[1.0, 1.0], [1.0, 1.0], [9.0, 11.0]])
    for _ in range(30):
        book(x, update=True)
    torch.testing.assert_close(book.weight[0], torch.tensor([1.0, 1.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(book.weight[1], torch.tensor([9.0, 11.0]), atol=1e-3, rtol=0)
    assert torch.equal(book.weight[2], torch.zeros(2))  # padding row untouched


def test_dead_codes_restart_on_batch_vectors():
    torch.manual_seed(0)
    book = VQEmbedding(4, 2, decay=0.9, dead_code_threshold=0.5)
    with torch.no_grad():
        book.weight[:4] = torch.tensor([[0.0, 0.0], [100.0, 100.0], [200.0, 200.0], [300.0, 300.0]])
        book.embed_ema.copy_(book.weight[:4])
        book.cluster_size_ema.fill_(1.0)
    x = torch.randn(64, 2) * 0.1  # everything sits at code 0; codes 1-3 starve
    for _ in range(10):
        book(x, update=True)
    assert book.weight[1:4].abs().max() < 5  # the far codes were moved next to the data
    assert (book.cluster_size_ema >= 0.5).all()


def test_kmeans_init_spreads_codes_over_the_data():
    torch.manual_seed(0)
    centres = torch.randn(16, 8) * 10
    z = centres.repeat_interleave(40, 0) + 0.01 * torch.randn(640, 8)
    rq = ResidualQuantizer(16, 8, 2)
    rq.kmeans_init(z, batches=10)
    codes = rq(z)[2]
    assert codes[:, 0].unique().numel() == 16
    # Consistent EMA state: per-batch usage counts, and weight == embed_ema / count.
    book = rq.codebooks[0]
    torch.testing.assert_close(book.cluster_size_ema.sum(), torch.tensor(64.0))
    torch.testing.assert_close(book.weight[:-1], book.embed_ema / book.cluster_size_ema[:, None])
    err = (rq(z)[0] - z).pow(2).mean()
    assert err < 0.01 * z.var()  # Lloyd's k-means may merge two clusters, but not more
