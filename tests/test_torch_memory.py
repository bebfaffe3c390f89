"""fastopt.torch's own CPU buffers (optimizer state, flatten=True's flat parameters and
gradients) are advised into transparent huge pages before their first touch (Linux,
``fastopt.config.HUGE_PAGES``): fewer page walks on every stream of the step.  Checked in
/proc/self/smaps, where the kernel reports the huge pages of each mapping."""
import sys

import pytest

torch = pytest.importorskip("torch")

import fastopt.torch as ft  # noqa: E402
from fastopt import config  # noqa: E402
from fastopt.torch import _tensors as T  # noqa: E402

N = 1 << 22          # 16 MiB of float32: four 2 MiB huge pages at least


def _thp_mode():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as fh:
            text = fh.read()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")]


pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or _thp_mode() not in ("madvise", "always"),
    reason="transparent huge pages are not available here (Linux, THP 'madvise' or 'always')")


def _mapping(t):
    """``(AnonHugePages in kB, VmFlags)`` of the mapping holding the middle of ``t``'s memory
    (VmFlags ``hg``: advised with MADV_HUGEPAGE)."""
    addr = t.data_ptr() + t.numel() * t.element_size() // 2
    inside, kb, flags = False, 0, set()
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split(None, 1)[0]
            if "-" in head and all(c in "0123456789abcdef-" for c in head):
                if inside:
                    break
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= addr < hi
            elif inside and head == "AnonHugePages:":
                kb = int(line.split()[1])
            elif inside and head == "VmFlags:":
                flags = set(line.split()[1:])
    return kb, flags


def _huge_kb(t):
    """AnonHugePages of the mapping holding the middle of ``t``'s memory."""
    return _mapping(t)[0]


def _stepped(n=N, **kw):
    p = torch.nn.Parameter(torch.randn(n))
    p.grad = torch.randn(n)
    opt = ft.AdamW([p], lr=1e-3, **kw)
    opt.step()
    return p, opt


def test_state_and_flat_buffers_are_in_huge_pages():
    """Every buffer is advised (the mapping's ``hg`` flag: fastopt's part); the kernel backs
    advised memory with huge pages when it has free 2 MiB frames (under fragmentation, as late
    in a long test run, it may fall back to 4 KiB pages for some: seen once in a CI run), so
    most of the five are checked to hold huge pages."""
    p, opt = _stepped()
    q, opt2 = _stepped(flatten=True)
    buffers = [(opt.state[p]["exp_avg"], "exp_avg"), (opt.state[p]["exp_avg_sq"], "exp_avg_sq"),
               (q, "flat parameters"), (q.grad, "flat gradients"),
               (opt2.state[q]["exp_avg"], "flat state")]
    for t, what in buffers:
        assert "hg" in _mapping(t)[1], f"{what}: not advised into huge pages"
    huge = [what for t, what in buffers if _huge_kb(t) >= 2048]
    assert len(huge) >= 3, f"huge pages only in {huge}"
    # (the values: the first step's moments, (1 - beta1)*g and (1 - beta2)*g*g)
    torch.testing.assert_close(opt.state[p]["exp_avg"], 0.1 * p.grad)
    torch.testing.assert_close(opt.state[p]["exp_avg_sq"], 0.001 * p.grad * p.grad)


@pytest.mark.skipif(_thp_mode() != "madvise", reason="THP 'always' backs every tensor anyway")
def test_only_advised_and_can_be_turned_off(monkeypatch):
    # (64 MiB: above glibc's largest mmap threshold, so fresh pages, never memory an earlier
    # advised buffer left behind in the heap)
    big = 1 << 24
    plain = torch.zeros(big)
    assert _huge_kb(plain) == 0              # torch's own allocation: 4 KiB pages
    monkeypatch.setattr(config, "HUGE_PAGES", False)
    p, opt = _stepped(big)
    assert _huge_kb(opt.state[p]["exp_avg"]) == 0
    small = T.filled((1000,), 1.0, torch.float32, torch.device("cpu"))
    assert torch.equal(small, torch.ones(1000))
