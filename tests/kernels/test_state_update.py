"""The decode steps' forms beyond the plain one: selective_state_update's head form (mamba_ssm's Mamba-2 step) and
pools of states for continuous batching (its state_batch_indices, causal_conv1d_update's conv_state_indices), on the
torch and the Triton (interpreted) paths, against float64 references (mamba_ssm's selective_state_update_ref)."""
import os
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from archdsl.kernels.conv1d import causal_conv1d_update
from archdsl.kernels.selective_scan import selective_state_update

BACKENDS = ["torch", "triton"]


def reference(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """The head form in float64, head by head: state [b, H, P, N] (a new tensor back), x, dt, z [b, H, P], A [H, P, N],
    B, C [b, G, N], D, dt_bias [H, P]. Returns (y [b, H, P], the new state)."""
    H = state.shape[1]
    dt = dt.double() + (0 if dt_bias is None else dt_bias.double())
    dt = F.softplus(dt) if dt_softplus else dt
    Bh, Ch = (M.double().repeat_interleave(H // M.shape[1], dim=1) for M in (B, C))  # [b, H, N]
    new = state.double() * torch.exp(dt[..., None] * A.double()) + (dt * x.double())[..., None] * Bh[:, :, None]
    y = torch.einsum("bhpn,bhn->bhp", new, Ch)
    if D is not None:
        y = y + x.double() * D.double()
    if z is not None:
        y = y * F.silu(z.double())
    return y, new


def case(b, H, P, N, G, seed, mamba2=False):
    """Random head-form arguments. mamba2: A, dt, dt_bias and D one value a head, expanded over P (and N) with
    stride 0, as mamba_ssm's Mamba2.step passes them."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    t = dict(x=r(b, H, P), dt=r(b, H, P), A=-r(H, P, N).exp(), B=r(b, G, N), C=r(b, G, N), D=r(H, P), z=r(b, H, P),
             dt_bias=r(H, P))
    if mamba2:
        t["A"] = -r(H).exp()[:, None, None].expand(H, P, N)
        t["dt"] = r(b, H)[..., None].expand(b, H, P)
        t["dt_bias"], t["D"] = r(H)[:, None].expand(H, P), r(H)[:, None].expand(H, P)
    return t, r(b, H, P, N)


def step(backend, state, t, **kw):
    with mock.patch.dict(os.environ, {"ARCHDSL_KERNELS": backend}):
        return selective_state_update(state, **t, dt_softplus=True, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=6, deadline=None)
@given(shape=st.tuples(st.integers(1, 3), st.sampled_from([1, 2, 4, 6]), st.sampled_from([1, 3, 8]),
                       st.sampled_from([1, 4, 5]), st.integers(0, 2), st.booleans(), st.integers(0, 999)))
def test_head_form_is_mamba_ssm_s(backend, shape):
    """The head form, with G dividing H (head h reads group h // (H / G)) and Mamba-2's expanded arguments, gives
    mamba_ssm's reference's y and new state."""
    b, H, P, N, g, mamba2, seed = shape
    G = [d for d in range(1, H + 1) if H % d == 0][g % len([d for d in range(1, H + 1) if H % d == 0])]
    t, state = case(b, H, P, N, G, seed, mamba2)
    y_want, s_want = reference(state, **t, dt_softplus=True)
    y = step(backend, state, t)
    assert y.shape == (b, H, P) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), y_want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state.double(), s_want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_head_form_state_of_strides_that_do_not_flatten(backend):
    """A state whose (H, P) cannot be viewed as H·P channels (a transposed view) is stepped through a copy and
    written back in place."""
    t, s = case(2, 3, 4, 5, 3, 0)
    state = s.transpose(1, 2).contiguous().transpose(1, 2)  # [b, H, P, N], P outer in memory
    with pytest.raises(RuntimeError):
        state.view(2, 12, 5)
    y_want, s_want = reference(state, **t, dt_softplus=True)
    y = step(backend, state, t)
    torch.testing.assert_close(y.double(), y_want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state.double(), s_want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("heads", [False, True])
def test_a_pool_of_states(backend, heads):
    """state_batch_indices: row b steps the pool's state idx[b]; a negative index is a pad (y 0, no state
    touched); the pool's other states are left as they were."""
    t, _ = case(4, 2, 3, 5, 1, 1)
    pool = torch.randn(6, 2, 3, 5, generator=torch.Generator().manual_seed(2))
    idx = torch.tensor([4, -1, 0, 2], dtype=torch.int32)
    y_want, s_want = reference(pool[idx.clamp_min(0).long()], **t, dt_softplus=True)
    if not heads:  # the plain form: channels D = H·P, one group
        t = dict(x=t["x"].flatten(1), dt=t["dt"].flatten(1), A=t["A"].flatten(0, 1), B=t["B"][:, 0], C=t["C"][:, 0],
                 D=t["D"].flatten(), z=t["z"].flatten(1), dt_bias=t["dt_bias"].flatten())
    got = pool.clone() if heads else pool.clone().flatten(1, 2)
    y = step(backend, got, t, state_batch_indices=idx).reshape(4, 2, 3)
    got = got.view(6, 2, 3, 5)
    for row, at in enumerate(idx.tolist()):
        if at < 0:
            assert (y[row] == 0).all()
        else:
            torch.testing.assert_close(y[row].double(), y_want[row], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got[at].double(), s_want[row], rtol=1e-5, atol=1e-5)
    for untouched in (1, 3, 5):
        assert torch.equal(got[untouched], pool[untouched])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("S", [3, 4])  # W-1 entries (causal-conv1d's), or W (mamba_ssm's)
@pytest.mark.parametrize("steps", [0, 3])  # x [b, D], or [b, D, T]
def test_a_pool_of_conv_states(backend, S, steps):
    """conv_state_indices: row b shifts the pool's window idx[b]; a negative index is a pad (y 0, no window
    touched); the pool's other windows are left as they were. Each live row is the plain step of its window."""
    g = torch.Generator().manual_seed(S + steps)
    x = torch.randn(4, 6, *((steps,) if steps else ()), generator=g)
    weight, bias = torch.randn(6, 4, generator=g), torch.randn(6, generator=g)
    pool = torch.randn(5, 6, S, generator=g)
    idx = torch.tensor([2, -1, 0, 4])
    got = pool.clone()
    with mock.patch.dict(os.environ, {"ARCHDSL_KERNELS": backend}):
        y = causal_conv1d_update(x, got, weight, bias, "silu", conv_state_indices=idx)
    for row, at in enumerate(idx.tolist()):
        if at < 0:
            assert (y[row] == 0).all()
            continue
        alone = pool[at:at + 1].double().clone()
        with mock.patch.dict(os.environ, {"ARCHDSL_KERNELS": "naive"}):
            want = causal_conv1d_update(x[row:row + 1].double(), alone, weight.double(), bias.double(), "silu")
        torch.testing.assert_close(y[row:row + 1].double(), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[at:at + 1].double(), alone, rtol=1e-6, atol=1e-6)
    for untouched in (1, 3):
        assert torch.equal(got[untouched], pool[untouched])


def test_bad_inputs_name_the_argument():
    t, state = case(2, 4, 3, 5, 2, 0)
    with pytest.raises(ValueError, match="B: groups G=3 must divide the heads H=4"):
        selective_state_update(state, **{**t, "B": torch.zeros(2, 3, 5)})
    with pytest.raises(ValueError, match=r"A: expected shape \[4, 3, 5\]"):
        selective_state_update(state, **{**t, "A": t["A"][:, :2]})
    with pytest.raises(ValueError, match=r"dt_bias: expected shape \[4, 3\]"):
        selective_state_update(state, **{**t, "dt_bias": t["dt_bias"].flatten()})
    with pytest.raises(ValueError, match=r"x: expected shape \[2, 4, 3\]"):
        selective_state_update(state, **{**t, "x": t["x"][:1]})
    with pytest.raises(ValueError, match=r"state_batch_indices: expected shape \[2\]"):
        selective_state_update(state, **t, state_batch_indices=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="state_batch_indices: expected an integer tensor"):
        selective_state_update(state, **t, state_batch_indices=torch.zeros(2))
    with pytest.raises(ValueError, match="state_batch_indices: index 2 is past the pool of 2 states"):
        selective_state_update(state, **t, state_batch_indices=torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match=r"state_batch_indices: names a state twice .*\[1, 1\]"):
        selective_state_update(state, **t, state_batch_indices=torch.tensor([1, 1]))
    x, pool, weight = torch.zeros(2, 6), torch.zeros(5, 6, 3), torch.zeros(6, 4)
    with pytest.raises(ValueError, match=r"conv_state_indices: expected shape \[2\]"):
        causal_conv1d_update(x, pool, weight, conv_state_indices=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="conv_state_indices: expected an integer tensor"):
        causal_conv1d_update(x, pool, weight, conv_state_indices=torch.zeros(2))
    with pytest.raises(ValueError, match=r"x: expected shape \[5, 6\]"):  # no indices: one row a window
        causal_conv1d_update(x, pool, weight)
    with pytest.raises(ValueError, match="conv_state_indices: index 5 is past the pool of 5 states"):
        causal_conv1d_update(x, pool, weight, conv_state_indices=torch.tensor([5, 0]))
    with pytest.raises(ValueError, match="conv_state_indices: names a state twice"):
        causal_conv1d_update(x, pool, weight, conv_state_indices=torch.tensor([3, 3]))


def test_the_kernels_leave_an_index_past_the_pool_alone():
    """On a GPU the indices are trusted (checking would wait for the card): a row whose index is past the pool is
    left alone as a pad (y 0), never written outside the pool. The kernels, interpreted, past the op's check."""
    from archdsl.kernels.conv1d.triton_conv1d import causal_conv1d_update_triton
    from archdsl.kernels.selective_scan.triton_selective_scan import selective_state_update_triton

    t, _ = case(2, 1, 4, 5, 1, 0)
    t = dict(x=t["x"][:, 0], dt=t["dt"][:, 0], A=t["A"][0], B=t["B"], C=t["C"], D=t["D"][0], z=t["z"][:, 0],
             dt_bias=t["dt_bias"][0])
    big = torch.randn(6, 4, 5)
    pool = big[:3]  # a view: the rows after it stand for memory past the pool
    before = big.clone()
    y = selective_state_update_triton(pool, **t, dt_softplus=True, state_batch_indices=torch.tensor([4, 1]))
    assert (y[0] == 0).all() and not (y[1] == 0).all()
    assert torch.equal(big[3:], before[3:]) and torch.equal(big[0], before[0]) and not torch.equal(big[1], before[1])
    windows = torch.randn(6, 4, 3)
    before = windows.clone()
    y = causal_conv1d_update_triton(torch.randn(2, 4), windows[:3], torch.randn(4, 4), None, None,
                                    torch.tensor([1, 3]))
    assert (y[1] == 0).all() and torch.equal(windows[3:], before[3:]) and not torch.equal(windows[1], before[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_gpu_mamba2_step_from_a_pool(dtype, tol):
    """Mamba-2 2.7B's step shapes (H80 P64 N128, one group), as Mamba2.step passes them, for 8 rows of a pool of 32
    float32 states (two pads), on the card, against the float64 reference."""
    t, _ = case(8, 80, 64, 128, 1, 0, mamba2=True)
    t = {k: v.cuda() if k in ("A", "dt", "dt_bias", "D") else v.to("cuda", dtype) for k, v in t.items()}
    pool = torch.randn(32, 80, 64, 128, device="cuda")
    idx = torch.tensor([3, 31, -1, 0, 7, 8, -1, 20], device="cuda")
    y_want, s_want = reference(pool[idx.clamp_min(0)], **t, dt_softplus=True)
    got = pool.clone()
    y = selective_state_update(got, **t, dt_softplus=True, state_batch_indices=idx)
    live = idx >= 0
    torch.testing.assert_close(y[live].double(), y_want[live], rtol=tol, atol=tol)
    assert (y[~live] == 0).all()
    torch.testing.assert_close(got[idx[live]].double(), s_want[live], rtol=tol, atol=tol)
