"""Checkpoints survive faults: a failed ``fastopt.save`` keeps the previous file (written to a
temporary file in the same folder, fsynced, then ``os.replace``; nothing left behind), and a
truncated or corrupted file raises ``ValueError`` naming its path with the optimizer unchanged."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastopt

from _support import make_problem
from test_api import assert_unchanged, snapshot


def _trained(state_dtype=None, size=5000):
    params, grads = make_problem([size, 7], np.float32)
    opt = fastopt.AdamW(params, lr=1e-2, state_dtype=state_dtype)
    for g in grads[:3]:
        opt.step(g)
    return opt


def _leftovers(folder):
    return [f for f in os.listdir(folder) if f.startswith(".fastopt-")]


def test_full_disk_keeps_previous_checkpoint(tmp_path):
    """The file-size limit hit half-way through a save (what a full disk looks like to a writer):
    the previous checkpoint is intact, byte for byte, and no temporary file is left."""
    path = tmp_path / "ckpt.npz"
    fastopt.save(_trained(size=20000), path)
    before = path.read_bytes()
    assert len(before) > 64 * 1024
    script = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # the write fails with EFBIG instead
        import numpy as np, fastopt
        from test_checkpoint_faults import _trained
        opt = _trained(size=20000)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, resource.RLIM_INFINITY))
        try:
            fastopt.save(opt, {str(path)!r})
        except OSError as exc:
            print("failed:", exc.errno)
        else:
            print("saved")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("failed:"), out.stdout
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    opt = _trained()
    fastopt.save(opt, path)
    before = path.read_bytes()
    real = np.savez

    def half_then_fail(fh, **arrays):
        real(fh, **arrays)
        fh.truncate(fh.tell() // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        fastopt.save(opt, path)
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_interrupted_save_leaves_nothing(tmp_path, monkeypatch):
    """Not only errors: a KeyboardInterrupt mid-write is cleaned up too."""
    path = tmp_path / "ckpt.npz"

    def interrupted(fh, **arrays):
        fh.write(b"PK\x03\x04partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fastopt.save(_trained(), path)
    assert not path.exists()
    assert _leftovers(tmp_path) == []


def test_saved_file_permissions_follow_umask(tmp_path):
    path = tmp_path / "ckpt.npz"
    old = os.umask(0o022)
    try:
        fastopt.save(_trained(), path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("state_dtype", [None, "int8"])
@pytest.mark.parametrize("damage", ["truncated", "corrupted", "empty", "not a zip"])
def test_damaged_file_is_a_value_error_and_changes_nothing(tmp_path, damage, state_dtype):
    path = tmp_path / "ckpt.npz"
    fastopt.save(_trained(state_dtype), path)
    data = path.read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "corrupted":          # flip bytes inside the first array's data
        mid = len(data) // 3
        data = data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 64]) + data[mid + 64:]
    elif damage == "empty":
        data = b""
    else:
        data = b"this is not a checkpoint\n" * 100
    path.write_bytes(data)
    opt = _trained(state_dtype)
    snap = snapshot(opt)
    with pytest.raises(ValueError, match=str(path).replace("\\", "\\\\")):
        fastopt.load(opt, path)
    assert_unchanged(opt, snap)
    assert opt.state_dict()["state"][0]["step"] == 3


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        fastopt.load(_trained(), tmp_path / "nope.npz")


def test_roundtrip_after_failed_save_is_bit_exact(tmp_path, monkeypatch):
    """The checkpoint kept through a failed save still resumes bit for bit."""
    path = tmp_path / "ckpt.npz"
    params, grads = make_problem([5000, 7], np.float32)
    opt = fastopt.AdamW(params, lr=1e-2, state_dtype="int8")
    for g in grads[:3]:
        opt.step(g)
    fastopt.save(opt, path)
    resumed_params = {k: p.copy() for k, p in params.items()}
    for g in grads[3:]:
        opt.step(g)

    def fail(fh, **arrays):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(np, "savez", fail)
        with pytest.raises(OSError):
            fastopt.save(opt, path)
    other = fastopt.AdamW(resumed_params, lr=1e-2, state_dtype="int8")
    fastopt.load(other, path)
    for g in grads[3:]:
        other.step(g)
    for k in params:
        np.testing.assert_array_equal(params[k], resumed_params[k])
