#!/usr/bin/python3
"""Reference values for ModelReferenceTests: a tiny PaLM model in PyTorch (float64).

Writes one safetensors file per variant holding the inputs (weights, tokens) and the expected
outputs (cross-entropy, z-loss, every parameter gradient). The C# test loads the same weights and
tokens into Palm.Gpu and compares. Run with Debian's python3-torch:

    /usr/bin/python3 tests/Palm.Gpu.Tests/Reference/pytorch/make_reference.py

The maths below is written out op by op so it can be read against the C# kernels:
shared embedding, layer norm with scale and no bias (eps 1e-5), rotate-half RoPE (base 10000),
causal attention with G key/value heads (G = 1 is multi-query), SwiGLU MLP, parallel or serial
blocks, logits = LN_f(x)·Eᵀ/√D, loss = mean(logZ − logit[target]) + z·mean(logZ²).
"""
import json
import math
import os
import struct

import torch

torch.manual_seed(0)
HERE = os.path.dirname(os.path.abspath(__file__))

CONFIG = dict(vocab=48, d_model=24, layers=2, heads=4, head_dim=6, d_ff=40, seq_len=9, batch=2, z_loss=1e-4)
VARIANTS = {
    "parallel_mqa": dict(block="parallel", attention="multi_query"),
    "serial_mha": dict(block="serial", attention="multi_head"),
}


def layer_norm(x, w):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * w


def rope(x):  # x (B,T,Hs,K)
    T, K = x.shape[1], x.shape[3]
    half = K // 2
    inv = torch.tensor([10000.0 ** (-2.0 * i / K) for i in range(half)], dtype=torch.float64)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]  # (T, K/2)
    cos, sin = torch.cos(ang)[None, :, None, :], torch.sin(ang)[None, :, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def attention(h, w, c, G):
    B, T, _ = h.shape
    H, K = c["heads"], c["head_dim"]
    q = rope((h @ w["attn.wq"]).view(B, T, H, K))
    k = rope((h @ w["attn.wk"]).view(B, T, G, K))
    v = (h @ w["attn.wv"]).view(B, T, G, K)
    k = k.repeat_interleave(H // G, dim=2)  # query head h reads kv head h // (H/G)
    v = v.repeat_interleave(H // G, dim=2)
    scores = torch.einsum("bthk,bshk->bhts", q, k) / math.sqrt(K)
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    scores = scores.masked_fill(mask, float("-inf"))
    att = torch.einsum("bhts,bshk->bthk", torch.softmax(scores, dim=-1), v).reshape(B, T, H * K)
    return att @ w["attn.wo"]


def mlp(h, w):
    g = h @ w["mlp.w_gate"]
    return (g * torch.sigmoid(g) * (h @ w["mlp.w_up"])) @ w["mlp.w_down"]


def forward(params, tokens, targets, c, block, G):
    x = params["embedding"][tokens]
    for l in range(c["layers"]):
        w = {k[len(f"layers.{l}."):]: v for k, v in params.items() if k.startswith(f"layers.{l}.")}
        if block == "parallel":
            h = layer_norm(x, w["ln.weight"])
            x = x + attention(h, w, c, G) + mlp(h, w)
        else:
            x = x + attention(layer_norm(x, w["ln1.weight"]), w, c, G)
            x = x + mlp(layer_norm(x, w["ln2.weight"]), w)
    hf = layer_norm(x, params["ln_f.weight"])
    logits = hf @ params["embedding"].T / math.sqrt(c["d_model"])
    log_z = torch.logsumexp(logits, dim=-1)
    ce = (log_z - logits.gather(-1, targets[..., None])[..., 0]).mean()
    z = c["z_loss"] * (log_z ** 2).mean()
    return ce, z


def make_params(c, block, G):
    D, HK, GK, F, V = c["d_model"], c["heads"] * c["head_dim"], G * c["head_dim"], c["d_ff"], c["vocab"]
    shapes = {"embedding": (V, D)}
    for l in range(c["layers"]):
        p = f"layers.{l}."
        if block == "parallel":
            shapes[p + "ln.weight"] = (D,)
        else:
            shapes[p + "ln1.weight"] = (D,)
            shapes[p + "ln2.weight"] = (D,)
        shapes.update({p + "attn.wq": (D, HK), p + "attn.wk": (D, GK), p + "attn.wv": (D, GK), p + "attn.wo": (HK, D),
                       p + "mlp.w_gate": (D, F), p + "mlp.w_up": (D, F), p + "mlp.w_down": (F, D)})
    shapes["ln_f.weight"] = (D,)
    params = {}
    for name, shape in shapes.items():
        if name.endswith("weight"):  # layer-norm scales near 1, perturbed so their gradients matter
            t = 1.0 + 0.1 * torch.randn(shape, dtype=torch.float64)
        else:
            t = torch.randn(shape, dtype=torch.float64) / (1.0 if name == "embedding" else math.sqrt(shape[0]))
        # Round to float32 so the C# model sees exactly these weights.
        params[name] = t.float().double().requires_grad_(True)
    return params


def write_safetensors(path, tensors, metadata):
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, t in tensors.items():
        data = t.detach().to(torch.float32).contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    hb = json.dumps(header).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


for variant, v in VARIANTS.items():
    c = CONFIG
    G = 1 if v["attention"] == "multi_query" else c["heads"]
    params = make_params(c, v["block"], G)
    tokens = torch.randint(0, c["vocab"], (c["batch"], c["seq_len"]))
    targets = torch.randint(0, c["vocab"], (c["batch"], c["seq_len"]))
    ce, z = forward(params, tokens, targets, c, v["block"], G)
    (ce + z).backward()
    out = {f"param.{k}": p for k, p in params.items()}
    out.update({f"grad.{k}": p.grad for k, p in params.items()})
    out["tokens"] = tokens.double()
    out["targets"] = targets.double()
    meta = {"config": json.dumps(dict(c, **v)), "cross_entropy": repr(ce.item()), "z_loss": repr(z.item())}
    write_safetensors(os.path.join(HERE, f"{variant}.safetensors"), out, meta)
    print(f"{variant}: ce={ce.item():.6f} z={z.item():.3e}")
