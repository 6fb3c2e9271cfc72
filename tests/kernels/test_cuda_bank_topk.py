"""CUDA ``bank_topk`` (csrc/bank_topk) against the reference ``bank_topk``.

Without a GPU (CI): the extension is built by the install when a CUDA toolkit is present and loads (the op
is registered with its schema; the CPU backend refuses it), ``cuda_available()`` says why it cannot run, the
loader's reasons and the wrapper's argument checks. With a GPU (marked ``gpu``): every kernel case below runs
on the device and is compared to the reference on the CPU: ties, exclusions, padding, dtypes, strides,
non-finite scores, k up to 4096 at shapes with many tiles, several splits, staging-buffer overflows and
partial query blocks. They skip, saying why, when the extension is neither built nor JIT-buildable there.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from reidscale.kernels import cuda as cuda_ops
from reidscale.kernels import reference_topk as ref
from reidscale.kernels.checks import Exclusions
from reidscale.kernels.cuda import cuda_available, cuda_bank_topk
from reidscale.kernels.support import BANK_TOPK_MAX_K

SCHEMA = (
    "reidscale::bank_topk(Tensor queries, Tensor bank, int k, Tensor? query_labels=None, "
    "Tensor? bank_labels=None, Tensor? self_index=None, Tensor? query_cams=None, Tensor? bank_cams=None, "
    "float cam_penalty=0., int splits=0) -> (Tensor scores, Tensor indices, Tensor nonfinite)"
)
HAS_GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")

# ------------------------------------------------------------------------------- GPU kernel cases

Case = Callable[[torch.device], None]


def _ints(shape: tuple[int, ...], low: int, high: int, gen: torch.Generator) -> torch.Tensor:
    """Integer-valued float32 features: every dot product is exact, so ties are real ties."""
    return torch.randint(low, high, shape, generator=gen).to(torch.float32)


def _cpu(value: object) -> object:
    return value.cpu() if isinstance(value, torch.Tensor) else value


def _compare(
    queries: torch.Tensor, bank: torch.Tensor, k: int, *, splits: int | None = None, **kw: object
) -> None:
    """Assert the CUDA result equals the reference exactly (integer-valued data: no rounding differences)."""
    exclusions = Exclusions.check(queries, bank.shape[0], **kw)
    got_s, got_i = cuda_bank_topk(queries, bank, k, exclusions, splits=splits)
    want_s, want_i = ref.bank_topk(queries.cpu(), bank.cpu(), k, **{n: _cpu(v) for n, v in kw.items()})
    assert got_s.shape == (queries.shape[0], k) and got_s.dtype == torch.float32
    assert got_i.shape == (queries.shape[0], k) and got_i.dtype == torch.int64
    assert torch.equal(got_i.cpu(), want_i), f"indices differ (splits={splits}):\n{got_i}\n{want_i}"
    assert torch.equal(got_s.cpu(), want_s), f"scores differ (splits={splits}):\n{got_s}\n{want_s}"


def _compare_float(queries: torch.Tensor, bank: torch.Tensor, k: int, *, splits: int | None = None) -> None:
    """Random float data: scores close to the reference's, and every returned index carries its own score.

    Summation order differs from the reference's matmul, so near-ties may swap; each returned (score, index)
    is therefore checked against the float64 product of that very row, and the indices of a row are distinct.
    """
    got_s, got_i = (t.cpu() for t in cuda_bank_topk(queries, bank, k, splits=splits))
    want_s, want_i = ref.bank_topk(queries.cpu(), bank.cpu(), k)
    torch.testing.assert_close(got_s, want_s, rtol=1e-5, atol=1e-5)
    assert torch.equal(got_i < 0, want_i < 0)
    exact = queries.cpu().double() @ bank.cpu().double().T
    own = exact.gather(1, got_i.clamp(min=0)).float()
    valid = got_i >= 0
    torch.testing.assert_close(got_s[valid], own[valid], rtol=1e-5, atol=1e-5)
    for row in got_i:
        taken = row[row >= 0]
        assert taken.unique().numel() == taken.numel()


def case_ties_odd_shapes(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(1)
    q, m = _ints((5, 7), -1, 2, gen), _ints((41, 7), -1, 2, gen)  # odd D, one partial tile
    _compare(q.to(device), m.to(device), 10)
    _compare(q.to(device), m.to(device), 1)


def case_all_scores_equal(device: torch.device) -> None:
    q, m = torch.ones(3, 4), torch.ones(500, 4)  # every score 4.0: order is by index only
    _compare(q.to(device), m.to(device), 17)
    _compare(q.to(device), m.to(device), 300, splits=3)
    expanded = torch.ones(1, 4, device=device).expand(500, 4)  # stride 0 rows: the bank is not copied
    _compare(q.to(device), expanded, 129, splits=2)


def case_labels_and_self(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(2)
    q, m = _ints((6, 9), -2, 3, gen), _ints((450, 9), -2, 3, gen)
    q_lab, b_lab = torch.randint(0, 3, (6,), generator=gen), torch.randint(0, 3, (450,), generator=gen)
    selves = torch.tensor([0, -1, 449, 7, 200, -1])
    d = device
    _compare(q.to(d), m.to(d), 12, query_labels=q_lab.to(d), bank_labels=b_lab.to(d), self_index=selves.to(d))
    _compare(q.to(d), m.to(d), 5, self_index=selves.to(d))
    # int32 bank labels are read in place, int8 / int16 ones converted: the same result
    for dtype in (torch.int32, torch.int8, torch.int16):
        kw = {"query_labels": q_lab.to(d, torch.int16), "bank_labels": b_lab.to(d, dtype)}
        _compare(q.to(d), m.to(d), 150, self_index=selves.to(d, torch.int32), splits=2, **kw)


def case_cam_penalty(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(3)
    q, m = _ints((4, 6), -2, 3, gen), _ints((370, 6), -2, 3, gen)
    q_cam, b_cam = torch.randint(0, 3, (4,), generator=gen), torch.randint(0, 3, (370,), generator=gen)
    q_lab, b_lab = torch.randint(0, 4, (4,), generator=gen), torch.randint(0, 4, (370,), generator=gen)
    d = device
    cams = {"query_cams": q_cam.to(d), "bank_cams": b_cam.to(d)}
    _compare(q.to(d), m.to(d), 9, cam_penalty=1.5, **cams)
    _compare(
        q.to(d), m.to(d), 200, cam_penalty=-0.75, query_labels=q_lab.to(d), bank_labels=b_lab.to(d), **cams
    )
    _compare(q.to(d), m.to(d), 9, cam_penalty=0.0, **cams)
    cams32 = {"query_cams": q_cam.to(d, torch.int32), "bank_cams": b_cam.to(d, torch.int32)}
    _compare(q.to(d), m.to(d), 130, cam_penalty=2.25, splits=3, **cams32)


def case_padding(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(4)
    q, m = _ints((3, 5), -2, 3, gen), _ints((11, 5), -2, 3, gen)
    d = device
    _compare(q.to(d), m.to(d), 20)  # k > N
    _compare(q.to(d), m.to(d), BANK_TOPK_MAX_K, splits=4)  # the largest k, nearly all padding
    labels = torch.tensor([7, 1, 7]), torch.tensor([7] * 11)  # queries 0 and 2: every row is a positive
    exclusions = Exclusions.check(q.to(d), 11, query_labels=labels[0].to(d), bank_labels=labels[1].to(d))
    s, i = cuda_bank_topk(q.to(d), m.to(d), 4, exclusions)
    assert bool((i[[0, 2]] == -1).all()) and bool(torch.isneginf(s[[0, 2]]).all())
    _compare(q.to(d), m.to(d), 4, query_labels=labels[0].to(d), bank_labels=labels[1].to(d))
    _compare(q.to(d), m[:0].to(d), 3)  # an empty bank: all padding
    _compare(q[:0].to(d), m.to(d), 3)  # no queries


def case_batch_sizes(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(5)
    m = _ints((333, 8), -2, 3, gen).to(device)
    _compare(_ints((1, 8), -2, 3, gen).to(device), m, 6)  # B = 1
    _compare(_ints((70, 8), -2, 3, gen).to(device), m, 40)  # three query blocks, the last partial


def case_half_dtypes(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(6)
    q, m = _ints((4, 11), -3, 4, gen), _ints((400, 11), -3, 4, gen)
    for dtype in (torch.float16, torch.bfloat16):
        _compare(q.to(device, dtype), m.to(device, dtype), 8)
        _compare(q.to(device, dtype), m.to(device, dtype), 300, splits=2)
    _compare(q.to(device, torch.float16), m.to(device, torch.bfloat16), 8)  # mixed dtypes
    _compare(q.to(device, torch.bfloat16), m.to(device, torch.float32), 8)


def case_random_float(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(7)
    q, m = torch.randn(37, 19, generator=gen), torch.randn(3000, 19, generator=gen)
    q, m = q / q.norm(dim=1, keepdim=True), m / m.norm(dim=1, keepdim=True)
    _compare_float(q.to(device), m.to(device), 7)
    _compare_float(q.to(device), m.to(device), 1000, splits=5)
    _compare_float(q.to(device, torch.bfloat16), m.to(device, torch.bfloat16), 150)


def case_non_contiguous(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(8)
    q = _ints((9, 4), -2, 3, gen).to(device).T  # [4, 9] with strides (1, 4)
    m = _ints((500, 18), -2, 3, gen).to(device)[::2, ::2]  # [250, 9] strided
    _compare(q, m, 6)
    _compare(q, m, 200, splits=2)
    column_major = _ints((9, 300), -2, 3, gen).to(device).T  # [300, 9] with strides (1, 300)
    _compare(q, column_major, 130)


def case_large_k(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(9)
    d = device
    q, m = _ints((70, 33), -1, 2, gen).to(d), _ints((20000, 33), -1, 2, gen).to(d)  # heavy ties
    labels = (
        torch.randint(0, 50, (70,), generator=gen).to(d),
        torch.randint(0, 50, (20000,), generator=gen).to(d),
    )
    selves = torch.randint(-1, 20000, (70,), generator=gen).to(d)
    cams = torch.randint(0, 4, (70,), generator=gen).to(d), torch.randint(0, 4, (20000,), generator=gen).to(d)
    kw = {"query_labels": labels[0], "bank_labels": labels[1], "self_index": selves}
    kw.update(query_cams=cams[0], bank_cams=cams[1], cam_penalty=0.5)
    for k in (129, 1000, 4096):
        for splits in (None, 1, 7):
            _compare(q, m, k, splits=splits, **kw)


def case_staging_overflow(device: torch.device) -> None:
    # ascending scores: every tile beats the threshold, so the staging buffer fills and flushes over and over
    bank = torch.arange(5000, dtype=torch.float32)[:, None].to(device)
    _compare(torch.ones(1, 1, device=device), bank, 129)
    _compare(torch.ones(3, 1, device=device), bank, 4096, splits=1)
    # descending: the threshold is set by the first tiles and filters everything after them
    _compare(-torch.ones(2, 1, device=device), bank, 1000, splits=2)


def case_non_finite(device: torch.device) -> None:
    q, m = torch.ones(2, 3), torch.ones(200, 3)
    m[130, 1] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        cuda_bank_topk(q.to(device), m.to(device), 3)
    m[130, 1] = float("nan")
    with pytest.raises(
        ValueError, match="non-finite"
    ):  # in an excluded row: still reported, as the reference
        selves = Exclusions.check(q.to(device), 200, self_index=torch.tensor([130, 130], device=device))
        cuda_bank_topk(q.to(device), m.to(device), 3, selves)
    big = torch.full((2, 3), 3e38)
    with pytest.raises(ValueError, match="non-finite"):  # finite inputs whose products overflow fp32
        cuda_bank_topk(big.to(device), big.to(device), 1)


def case_op_argument_checks(device: torch.device) -> None:
    q, m = torch.ones(2, 3, device=device), torch.ones(5, 3, device=device)
    op = torch.ops.reidscale.bank_topk
    with pytest.raises(ValueError, match="k must be in"):
        op(q, m, 0)
    with pytest.raises(ValueError, match="bank must have D = 3"):
        op(q, torch.ones(5, 4, device=device), 2)
    with pytest.raises(ValueError, match="bank_labels must be a 1-D integer tensor of length 5"):
        op(q, m, 2, torch.zeros(2, dtype=torch.long, device=device), torch.zeros(5, device=device))
    with pytest.raises(ValueError, match="given together"):
        op(q, m, 2, None, None, None, torch.zeros(2, dtype=torch.long, device=device))


CASES: dict[str, Case] = {name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


def _skip_without_extension() -> None:
    ok, reason = cuda_available()
    if not ok:
        pytest.skip(f"the CUDA extension is not available: {reason}")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_matches_reference(name: str) -> None:
    _skip_without_extension()
    CASES[name](torch.device("cuda"))


@pytest.mark.gpu
@needs_gpu
def test_result_does_not_depend_on_splits() -> None:
    _skip_without_extension()
    gen = torch.Generator().manual_seed(11)
    q, m = torch.randn(40, 64, generator=gen).cuda(), torch.randn(30000, 64, generator=gen).cuda()
    first = cuda_bank_topk(q, m, 500)
    for splits in (1, 2, 13, 100):
        again = cuda_bank_topk(q, m, 500, splits=splits)
        assert torch.equal(first[1], again[1]) and torch.equal(first[0], again[0]), splits


# ----------------------------------------------------------------------------------- CPU tests


def _toolkit_expected() -> bool:
    return os.environ.get("REIDSCALE_BUILD_CUDA") != "0" and cuda_ops.cuda_toolkit_root() is not None


@pytest.mark.skipif(not _toolkit_expected(), reason="no CUDA toolkit (or REIDSCALE_BUILD_CUDA=0): not built")
def test_extension_is_built_and_registers_the_op() -> None:
    module = importlib.import_module("reidscale._C")
    assert Path(module.__file__).suffix == ".so"
    assert str(torch.ops.reidscale.bank_topk.default._schema) == SCHEMA
    assert cuda_ops.cuda_extension() is module


@pytest.mark.skipif(not _toolkit_expected(), reason="no CUDA toolkit (or REIDSCALE_BUILD_CUDA=0): not built")
def test_op_refuses_cpu_tensors() -> None:
    importlib.import_module("reidscale._C")
    with pytest.raises(NotImplementedError, match="'reidscale::bank_topk' with arguments from the 'CPU'"):
        torch.ops.reidscale.bank_topk(torch.ones(2, 3), torch.ones(5, 3), 2)


def test_cuda_available_gives_a_reason() -> None:
    ok, reason = cuda_available()
    assert reason
    if not HAS_GPU:
        assert not ok and "no CUDA device" in reason


def test_loader_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without reidscale._C: JIT disabled, or no GPU to JIT for, each gives None and says so."""

    def not_built(name: str) -> object:
        raise ImportError(f"No module named {name!r}")

    cuda_ops._load_extension.cache_clear()
    monkeypatch.setattr(importlib, "import_module", not_built)
    try:
        monkeypatch.setenv("REIDSCALE_CUDA_JIT", "0")
        module, reason = cuda_ops._load_extension()
        assert module is None and "cannot be imported" in reason and "REIDSCALE_CUDA_JIT=0" in reason
        cuda_ops._load_extension.cache_clear()
        monkeypatch.delenv("REIDSCALE_CUDA_JIT")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        module, reason = cuda_ops._load_extension()
        assert module is None and "no CUDA device to JIT-build for" in reason
    finally:
        cuda_ops._load_extension.cache_clear()


def test_toolkit_root_sees_through_wrappers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_HOME", raising=False)
    root = cuda_ops.cuda_toolkit_root()
    if root is None:
        pytest.skip("no CUDA toolkit on this machine")
    assert (Path(root) / "bin" / "nvcc").is_file()
    assert (Path(root) / "include" / "cuda_runtime.h").is_file()  # a toolkit, not /usr/local of a wrapper
    monkeypatch.setenv("CUDA_HOME", "/opt/some/cuda")
    assert cuda_ops.cuda_toolkit_root() == "/opt/some/cuda"


def test_jit_sources_are_the_csrc_files() -> None:
    names = {Path(p).name for p in cuda_ops.jit_sources()}
    assert {"bank_topk_api.cpp", "bank_topk_kernel.cu", "extension_module.cpp"} <= names


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((torch.ones(2, 3), [(torch.ones(5, 3), 1.0)], 2), {}, "single"),
        ((torch.ones(2, 3), torch.ones(5, 4), 2), {}, "queries must have D = 4"),
        ((torch.ones(2, 3), torch.ones(5, 3), 0), {}, "k must be"),
        ((torch.ones(2, 3), torch.ones(5, 3), BANK_TOPK_MAX_K + 1), {}, "k must be"),
        ((torch.ones(2, 3).long(), torch.ones(5, 3), 2), {}, "queries must be a 2-D"),
        ((torch.ones(2, 3), torch.ones(5, 3), 2, "labels"), {}, "exclusions must be an Exclusions"),
        (
            (
                torch.ones(2, 3),
                torch.ones(5, 3),
                2,
                Exclusions.check(torch.ones(3, 3), 5, self_index=-torch.ones(3).long()),
            ),
            {},
            r"exclusions.self_index must be .* length 2",
        ),
        ((torch.ones(2, 3), torch.ones(5, 3), 2), {"splits": 0}, "splits must be"),
        ((torch.ones(2, 3), torch.ones(5, 3), 2), {}, "CUDA device"),
    ],
)
def test_bad_arguments_raise_value_error(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cuda_bank_topk(*args, **kwargs)
