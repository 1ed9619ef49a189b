"""Invariants of the weighted step and the fine-tune loop."""

from __future__ import annotations

import copy

import pytest
import torch

from winnow import train as train_mod
from winnow.config import TrainConfig
from winnow.data import collate, encode_all
from winnow.step import batch_losses, weighted_step


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_uniform_weights_reproduce_plain_sft_loss_and_gradients(tiny, examples):
    """Weights of 1 give the plain SFT objective: the mean of each example's own HF loss."""
    model, tok = tiny
    enc = encode_all(tok, examples[:8], max_length=128)
    batch = collate(enc.items, list(range(8)), tok.pad_token_id)

    ref = copy.deepcopy(model)
    plain = torch.stack([
        ref(input_ids=torch.tensor([e.input_ids]), labels=torch.tensor([e.labels])).loss for e in enc.items
    ]).mean()  # transformers' own shift and mean over each example's target tokens
    plain.backward()

    weighted = (torch.ones(8) * batch_losses(model, batch)).mean()
    weighted.backward()
    assert torch.allclose(weighted, plain, atol=1e-5)
    g_ref, g = _grads(ref), _grads(model)
    assert g.keys() == g_ref.keys()
    for name in g:
        assert torch.allclose(g[name], g_ref[name], atol=1e-5, rtol=1e-4), name


def test_gradient_accumulation_1x8_equals_8x1(tiny, examples):
    model, tok = tiny
    enc = encode_all(tok, examples[:8], max_length=128)
    w = torch.tensor([0.5, 1.5, 1.0, 0.0, 2.0, 1.0, 0.25, 1.75])
    results = []
    for split in (1, 8):
        m = copy.deepcopy(model)
        params = [p for p in m.parameters() if p.requires_grad]
        # SGD: the update is the gradient itself (Adam's first step is ~sign(g), which hides
        # nothing but amplifies float noise on near-zero gradients)
        opt = torch.optim.SGD(params, lr=0.1)
        size = 8 // split
        micro = [(collate(enc.items[s:s + size], list(range(s, s + size)), tok.pad_token_id), w[s:s + size])
                 for s in range(0, 8, size)]
        stats = weighted_step(m, opt, micro, params=params, max_grad_norm=1.0)
        results.append((stats, torch.cat([p.detach().flatten() for p in m.parameters()])))
    (s1, p1), (s8, p8) = results
    assert abs(s1.loss - s8.loss) < 1e-5 and abs(s1.grad_norm - s8.grad_norm) < 1e-4
    assert torch.allclose(p1, p8, atol=1e-6)


def _params(model_dir):
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def test_resumed_run_equals_uninterrupted(tmp_path, examples, monkeypatch):
    cfg = TrainConfig(model="tiny", max_steps=6, batch_size=4, lr=1e-3, save_every=2, seed=3)
    full = train_mod.finetune(examples[:24], cfg, tmp_path / "full", progress=False)
    assert full.steps == 6

    real_save = train_mod.save_checkpoint

    def save_then_die(root, step, **kw):
        path = real_save(root, step, **kw)
        if step == 4:
            raise KeyboardInterrupt  # the process is killed right after the step-4 checkpoint
        return path

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_mod.finetune(examples[:24], cfg, tmp_path / "cut", progress=False)
    assert not (tmp_path / "cut" / "model").exists()  # no partial output
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    resumed = train_mod.finetune(examples[:24], cfg, tmp_path / "cut", progress=False)
    assert resumed.steps == 6

    a, b = _params(tmp_path / "full" / "model"), _params(tmp_path / "cut" / "model")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    steps = [r["step"] for r in train_mod.read_jsonl(tmp_path / "cut" / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
