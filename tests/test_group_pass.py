"""The channel groups' coding pass (``latent_codecs.group_pass``) writes and reads the streams of the step-by-step
loop (which runs while a MAC counter watches: ``float64_products``), for any set of coded cells."""

import pytest
import torch

from mutualfc.latent_codecs.group_pass import group_weights
from mutualfc.nn.intgemm import float64_products
from tests.test_mutual_model import _net, random_levels

H, W = 8, 10


def _keeps():
    """All cells, a block, one anchor cell (no non-anchors), one non-anchor cell (no anchors), a scatter."""
    block = torch.zeros(1, 1, H, W, dtype=torch.bool)
    block[..., 2:6, 3:8] = True
    anchor, other = torch.zeros_like(block), torch.zeros_like(block)
    anchor[..., 4, 6] = True  # (4 + 6) even: an anchor
    other[..., 4, 5] = True
    scatter = torch.rand(1, 1, H, W, generator=torch.Generator().manual_seed(4)) < 0.3
    return [None, block, anchor, other, scatter]


@pytest.fixture(scope="module")
def net():
    return _net()


@pytest.mark.parametrize("keep", _keeps(), ids=["all", "block", "anchor", "non-anchor", "scatter"])
@pytest.mark.parametrize("quality", [0, 2.5])
def test_group_pass_codes_what_the_step_by_step_loop_codes(net, keep, quality):
    lv = random_levels(11, h=H, w=W)
    groups = net.bfc.latent_codec.latent_codec["y"]
    like = torch.zeros(1, 1, dtype=torch.float64)
    assert all(group_weights(groups.latent_codec[f"y{k}"], like) is not None for k in range(len(groups.groups)))
    strings, meta = net.compress(lv, quality, keep=keep)
    with float64_products():  # the step-by-step loop, its products as torch products
        assert all(group_weights(groups.latent_codec[f"y{k}"], like) is None for k in range(len(groups.groups)))
        reference, _ = net.compress(lv, quality, keep=keep)
        stepwise = net.decompress(strings, meta["size"], quality)
    assert strings == reference
    compiled = net.decompress(strings, meta["size"], quality)
    assert all(torch.equal(compiled[k], stepwise[k]) and torch.equal(compiled[k], meta["levels"][k]) for k in lv)


def test_channel_context_on_the_whole_map_path_codes_what_the_cell_path_codes(net, monkeypatch):
    """Where the context network's cell path does not apply (another device), ``stack_at`` on every layer but the
    last one feeds the composed layer (bitstream version 6): the same streams and decoded levels."""
    from mutualfc.nn import cell_stack

    lv = random_levels(12, h=H, w=W)
    keep = _keeps()[4]
    strings, meta = net.compress(lv, 2.5, keep=keep)
    monkeypatch.setattr(cell_stack, "applies", lambda layers, cols: False)
    reference, ref_meta = net.compress(lv, 2.5, keep=keep)
    assert strings == reference
    assert all(torch.equal(meta["levels"][k], ref_meta["levels"][k]) for k in lv)


def test_compiled_index_maps_equal_their_tensor_forms():
    """The compiled reads of the context convolution (``context_sources``) and the cell blocks' raster indices
    (``block_indexes``) equal the tensor forms (which int32 positions take), cells at the map's edges included.
    Fails when a tap's offset, the clamp into the map or the (row, column, cell) order differs."""
    from mutualfc.nn.context import context_sources, context_weights
    from mutualfc.nn.sparse import block_indexes

    g = torch.Generator().manual_seed(5)
    cells = torch.randperm(H * W, generator=g)[:30]
    edges = torch.tensor([0, W - 1, (H - 1) * W, H * W - 1])
    idx = torch.cat([edges, cells])
    for f in (1, 2, 4):
        assert torch.equal(block_indexes(idx, W, f), block_indexes(idx.int(), W, f).long())
    conv = _net().bfc.latent_codec.latent_codec["y"].latent_codec["y1"].context_prediction
    taps = context_weights(conv, True)
    for nonzero in (None, cells):
        compiled = context_sources(conv, (H, W), idx, taps, None, nonzero)
        tensors = context_sources(conv, (H, W), idx.int(), taps, None, nonzero)
        assert torch.equal(compiled.flat, tensors.flat) and torch.equal(compiled.src, tensors.src)
        assert compiled.outside is not None and torch.equal(compiled.outside, tensors.outside)
        assert (compiled.src == -1).any() and (compiled.live == tensors.live).all()
    inner = torch.tensor([3 * W + 4])  # every tap inside the map
    assert context_sources(conv, (H, W), inner, taps).outside is None


def test_compiled_column_gather_equals_gather_and_refuses_indexes_out_of_range():
    from mutualfc.nn.sparse import take_columns

    x = torch.randn(5, 40, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    idx = torch.tensor([39, 0, 7, 7, 21])
    for t in (x, x.float(), x[:, ::2], x.T.contiguous().T):  # either dtype, strided views
        i = idx.clamp(max=t.shape[1] - 1)
        assert torch.equal(take_columns(t, i), torch.gather(t, 1, i.expand(t.shape[0], -1)))
    for bad in (torch.tensor([40]), torch.tensor([-1])):
        with pytest.raises(IndexError):
            take_columns(x, bad)
