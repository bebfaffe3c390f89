"""fastopt.torch inside the trainers people use: Hugging Face ``Trainer`` (``optimizers=`` and
``optimizer_cls_and_kwargs=``, checkpoint save/resume through ``torch.save`` /
``torch.load(weights_only=True)``) and PyTorch Lightning (``configure_optimizers``, the
closure-based ``step``, a checkpoint restore), each against ``torch.optim.AdamW`` on a tiny
random model (nothing is downloaded)."""
import os

import pytest

torch = pytest.importorskip("torch")

import fastopt.torch as ft  # noqa: E402

LR, WD = 3e-3, 0.01
#: float32 Adam steps of lr 3e-3 on parameters near 0: measured differences to torch up to
#: 1.7e-6 absolute
TOL = dict(rtol=1e-4, atol=1e-5)


# -- Hugging Face Trainer ----------------------------------------------------------------------

def _gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=61, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n=24, length=12):
        g = torch.Generator().manual_seed(7)
        self.ids = torch.randint(0, 61, (n, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _hf_run(tmp_path, name, steps=6, resume=None, **how):
    transformers = pytest.importorskip("transformers")
    model = _gpt2()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / name), max_steps=steps, per_device_train_batch_size=4,
        learning_rate=LR, weight_decay=WD, lr_scheduler_type="constant", warmup_steps=0,
        logging_steps=1, save_steps=3, save_strategy="steps", report_to=[], use_cpu=True,
        seed=0, data_seed=0, dataloader_num_workers=0, disable_tqdm=True)
    if "optimizers" in how:
        how = {"optimizers": (how["optimizers"](model), None)}
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Tokens(), **how)
    trainer.train(resume_from_checkpoint=resume)
    losses = {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}
    return trainer, losses, [p.detach().clone() for p in model.parameters()]


def _decay_groups(model):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": WD}, {"params": rest, "weight_decay": 0.0}]


def test_hf_trainer_optimizers_and_resume(tmp_path):
    pytest.importorskip("transformers")
    _, ref_losses, ref_params = _hf_run(
        tmp_path, "torch", optimizers=lambda m: torch.optim.AdamW(_decay_groups(m), lr=LR))
    trainer, losses, params = _hf_run(
        tmp_path, "fastopt", optimizers=lambda m: ft.AdamW(_decay_groups(m), lr=LR))
    assert isinstance(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                      else trainer.optimizer, ft.AdamW)
    assert sorted(losses) == sorted(ref_losses) == list(range(1, 7))
    for s in ref_losses:
        assert losses[s] == pytest.approx(ref_losses[s], rel=1e-4), s
    for a, b in zip(ref_params, params):
        torch.testing.assert_close(b, a, **TOL)
    # resume from the step-3 checkpoint (optimizer.pt: torch.save, torch.load(weights_only=True))
    ckpt = tmp_path / "fastopt" / "checkpoint-3"
    assert (ckpt / "optimizer.pt").exists()
    torch.load(ckpt / "optimizer.pt", weights_only=True)
    _, again, params2 = _hf_run(tmp_path, "fastopt-resumed", resume=str(ckpt),
                                optimizers=lambda m: ft.AdamW(_decay_groups(m), lr=LR))
    assert sorted(again) == list(range(1, 7))   # 1-3 from the checkpoint's log, 4-6 new
    for s in again:
        assert again[s] == pytest.approx(losses[s], rel=1e-5), s
    for a, b in zip(params, params2):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_hf_trainer_optimizer_cls_and_kwargs(tmp_path):
    transformers = pytest.importorskip("transformers")
    import inspect
    if "optimizer_cls_and_kwargs" not in inspect.signature(transformers.Trainer).parameters:
        pytest.skip("this transformers has no optimizer_cls_and_kwargs")
    _, ref, _ = _hf_run(tmp_path, "torch-cls",
                        optimizer_cls_and_kwargs=(torch.optim.AdamW, {"lr": LR}))
    trainer, got, _ = _hf_run(tmp_path, "fastopt-cls",
                              optimizer_cls_and_kwargs=(ft.AdamW, {"lr": LR}))
    opt = trainer.optimizer
    assert isinstance(getattr(opt, "optimizer", opt), ft.AdamW)
    for s in ref:
        assert got[s] == pytest.approx(ref[s], rel=1e-4), s


# -- PyTorch Lightning -------------------------------------------------------------------------

def _lightning_module(cls):
    L = pytest.importorskip("lightning.pytorch")

    class Regression(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(),
                                           torch.nn.Linear(16, 1))
            self.losses = []

        def training_step(self, batch, i):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.losses.append(loss.item())
            return loss

        def configure_optimizers(self):
            return cls(self.parameters(), lr=LR, weight_decay=WD)

    return Regression()


def _loader():
    """One batch per epoch: a checkpoint after any step is at an epoch's end, so the resumed
    run sees the batches the uninterrupted one did."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, generator=g)
    ds = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True).sin())
    return torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False)


def _fit(module, steps, tmp_path, ckpt=None):
    L = pytest.importorskip("lightning.pytorch")
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(module, _loader(), ckpt_path=ckpt)
    return trainer


def test_lightning_configure_optimizers_closure_and_restore(tmp_path):
    pytest.importorskip("lightning.pytorch")
    ref = _lightning_module(torch.optim.AdamW)
    got = _lightning_module(ft.AdamW)
    _fit(ref, 8, tmp_path)
    trainer = _fit(got, 4, tmp_path)
    assert isinstance(trainer.optimizers[0], ft.AdamW)
    path = os.path.join(tmp_path, "half.ckpt")
    trainer.save_checkpoint(path)
    _fit(got, 8, tmp_path, ckpt=path)      # restores the optimizer state, then 4 more steps
    assert len(got.losses) == len(ref.losses) == 8
    assert got.losses == pytest.approx(ref.losses, rel=1e-4)
    for a, b in zip(ref.parameters(), got.parameters()):
        torch.testing.assert_close(b, a, **TOL)
    # a fresh module restored from the checkpoint follows the same path
    fresh = _lightning_module(ft.AdamW)
    _fit(fresh, 8, tmp_path, ckpt=path)
    assert fresh.losses == pytest.approx(ref.losses[4:], rel=1e-4)
    for a, b in zip(ref.parameters(), fresh.parameters()):
        torch.testing.assert_close(b, a, **TOL)
