"""Scan orders against the index maps written out in spec/vmamba.md §2.6, merge = adjoint of scan."""
import pytest
import torch

from vssm.ops import SCAN_ORDERS, cascade_merge, cascade_scan, cross_merge, cross_scan, scan_index_maps

SIZES = [(1, 1), (3, 5), (4, 4), (7, 2), (1, 6)]


def spec_maps(order, H, W):
    """Direction k's sequence index -> row-major pixel index, straight from the spec's formulas."""
    L = H * W
    maps = [[0] * L for _ in range(4)]
    for h in range(H):
        for w in range(W):
            p, q = h * W + w, w * H + h
            if order == "cross2d":
                slots = (p, q, L - 1 - p, L - 1 - q)
            elif order == "unidi":
                slots = (p, p, p, p)
            else:  # bidi
                slots = (p, p, L - 1 - p, L - 1 - p)
            for k, slot in enumerate(slots):
                maps[k][slot] = p
    return torch.tensor(maps)


@pytest.mark.parametrize("order", SCAN_ORDERS)
@pytest.mark.parametrize("size", SIZES)
def test_index_maps_follow_the_spec(order, size):
    assert torch.equal(scan_index_maps(order, *size), spec_maps(order, *size))


@pytest.mark.parametrize("order", SCAN_ORDERS)
@pytest.mark.parametrize("size", SIZES)
def test_cross_scan_both_layouts(order, size):
    H, W = size
    x = torch.randn(2, 3, H, W)
    xs = cross_scan(x, order)
    assert xs.shape == (2, 4, 3, H * W)
    expected = x.flatten(2)[:, :, spec_maps(order, H, W)].permute(0, 2, 1, 3)
    assert torch.equal(xs, expected)
    xl = cross_scan(x.permute(0, 2, 3, 1), order, channel_last=True)
    assert xl.shape == (2, H * W, 4, 3)
    assert torch.equal(xl, xs.permute(0, 3, 1, 2))


@pytest.mark.parametrize("order", SCAN_ORDERS)
@pytest.mark.parametrize("size", SIZES)
def test_merge_of_scan_and_adjoint(order, size):
    H, W = size
    x = torch.randn(2, 3, H, W, dtype=torch.float64)
    torch.testing.assert_close(cross_merge(cross_scan(x, order), H, W, order), 4 * x)
    # merge is the adjoint of scan: <scan(x), y> == <x, merge(y)>
    ys = torch.randn(2, 4, 3, H * W, dtype=torch.float64)
    lhs = (cross_scan(x, order) * ys).sum()
    rhs = (x * cross_merge(ys, H, W, order)).sum()
    torch.testing.assert_close(lhs, rhs)
    # merge sums each direction at its own index map
    maps = spec_maps(order, H, W)
    expected = torch.zeros(2, 3, H * W, dtype=torch.float64)
    for k in range(4):
        expected[:, :, maps[k]] += ys[:, k]
    torch.testing.assert_close(cross_merge(ys, H, W, order), expected.view(2, 3, H, W))
    yl = cross_merge(ys.permute(0, 3, 1, 2), H, W, order, channel_last=True)
    torch.testing.assert_close(yl, expected.view(2, 3, H, W).permute(0, 2, 3, 1))


@pytest.mark.parametrize("axis", ["rows", "cols"])
def test_cascade_orders(axis):
    x = torch.randn(2, 3, 4, 5)
    seqs = cascade_scan(x, axis)
    lines, length = (2 * 4, 5) if axis == "rows" else (2 * 5, 4)
    assert seqs.shape == (lines, 2, 3, length)
    line = x[1, :, 2, :] if axis == "rows" else x[1, :, :, 2]  # row 2 / column 2 of image 1
    index = 1 * 4 + 2 if axis == "rows" else 1 * 5 + 2
    assert torch.equal(seqs[index, 0], line)
    assert torch.equal(seqs[index, 1], line.flip(-1))
    torch.testing.assert_close(cascade_merge(seqs, 2, axis), 2 * x)
    xl = x.permute(0, 2, 3, 1)
    seqs_l = cascade_scan(xl, axis, channel_last=True)
    assert torch.equal(seqs_l, seqs.permute(0, 3, 1, 2))
    torch.testing.assert_close(cascade_merge(seqs_l, 2, axis, channel_last=True), 2 * xl)


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown scan order 'zigzag'"):
        cross_scan(torch.randn(1, 2, 3, 3), "zigzag")
    with pytest.raises(ValueError, match=r"expected a 4-D feature map \(B, C, H, W\)"):
        cross_scan(torch.randn(2, 3, 9))
    with pytest.raises(ValueError, match="L = 3\\*3 = 9"):
        cross_merge(torch.randn(1, 4, 2, 8), 3, 3)
    with pytest.raises(ValueError, match="axis must be 'rows' or 'cols'"):
        cascade_scan(torch.randn(1, 2, 3, 3), "diagonal")
