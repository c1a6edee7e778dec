#!/usr/bin/python3
"""A plain PyTorch implementation of ctuner's LoRA training step, to benchmark
ctuner against (bench/bench_train.sh). Self-contained: needs only torch (Debian's
python3-torch, 1.13, CPU); no transformers, no peft.

The model is InternLM2 exactly as docs ARCHITECTURE.md section 5 describes it:
wqkv rows grouped per KV head (G query heads, then k_g, then v_g), RoPE on the
full head_dim with rotate_half, RMSNorm in fp32, SwiGLU, causal softmax
attention in fp32 that never crosses a packed-sample boundary (a
block-diagonal causal mask; positions restart at each sample), output head,
cross-entropy over the shifted labels with ignore_index -100 (mean over the
trained tokens of the step). LoRA (section 7) on wqkv, wo, w1, w2, w3:
y = x W^T + (alpha/r) * (drop(x) A^T) B^T, A kaiming-uniform (U(+-1/sqrt(in))),
B zeros (PEFT's init, and ctuner's) or small random (--b-init random); AdamW
over the LoRA weights only, global-norm clipping of their grads (--max-norm).
Optional per-layer activation checkpointing (torch.utils.checkpoint,
non-reentrant), as ctuner's gradient_checkpointing.

Frozen base weights: --weights stored (default) keeps them in the checkpoint's
dtype (bf16/f16/f32) and converts each to f32 where it is used, as ctuner's CPU
backend does per tile (the f32 copy lives for the op, and for autograd's
backward when not checkpointing); --weights f32 converts them once at load.
All math is fp32, unless --autocast bf16: then the forward (and its
checkpointed recomputation) runs under torch.autocast("cpu", bfloat16), so the
linears and attention matmuls run in bf16 (oneDNN) with fp32 accumulation, as
PyTorch users train in bf16 on a CPU; LoRA weights, grads and AdamW stay fp32.

Data: --data FILE.jsonl, pretokenized records {"input_ids": [...]} (labels =
input_ids, every token trained, as ctuner's pretokenized format without
"labels"). Records are packed in file order into rows of --seq tokens (a
record longer than --seq is cut; a record that does not fit the rest of the
row starts a new one; the rest of a row is padding with label -100); step i
trains rows [i*B, (i+1)*B) cyclically. Without --data: --rows random rows of
--seq ids (seed --seed), one sample per row.

Output: one JSON line on stdout: tokens_per_s (tokens of steps 1..S-1 over
their wall time: the first step is a warm-up), peak_rss_mb (getrusage
ru_maxrss of this process, including Python and torch themselves),
base_rss_mb (ru_maxrss after importing torch, before the model is loaded),
losses (every step's loss, before its optimizer step), step_s, and the
settings. --eval-only: no training; packs all records of --data into one
forward (rows of --seq) and prints {"loss", "tokens", "samples": [{"nll_sum",
"tokens"}]} (the numbers ctuner eval --json prints).

--save-adapter DIR writes the initial LoRA weights as a PEFT adapter directory
(adapter_config.json + adapter_model.safetensors) so that ctuner can start
from exactly the same adapter (lora.init_from); --load-adapter DIR reads one.
"""
import argparse
import json
import math
import mmap
import os
import resource
import struct
import time

import torch
import torch.nn.functional as F
import torch.utils.checkpoint


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


BASE_RSS_MB = rss_mb()

# ---------------------------------------------------------------- safetensors

ST_DTYPES = {"F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
             "I32": (torch.int32, 4), "I64": (torch.int64, 8), "U8": (torch.uint8, 1)}


def st_read(path):
    """name -> tensor (the stored dtype), from one .safetensors file. Zero-copy:
    the tensors are views of a copy-on-write mmap of the file, as ctuner maps
    its checkpoints (the pages count in RSS once touched, once)."""
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)   # writable view: torch.frombuffer wants that
    (n,) = struct.unpack("<Q", mm[:8])
    header = json.loads(mm[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt, size = ST_DTYPES[info["dtype"]]
        a, b = info["data_offsets"]
        count = (b - a) // size
        if count == 0:
            t = torch.empty(0, dtype=dt)
        else:
            t = torch.frombuffer(mm, dtype=dt, count=count, offset=base + a)
        out[name] = t.reshape(info["shape"])
    return out


def st_write(path, tensors, metadata=None):
    """Writes f32 tensors (dict name -> tensor) as a .safetensors file."""
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name in sorted(tensors):
        t = tensors[name].detach().to(torch.float32).contiguous()
        data = t.numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def load_model_dir(d):
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    idx = os.path.join(d, "model.safetensors.index.json")
    weights = {}
    if os.path.exists(idx):
        with open(idx) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        for fn in files:
            weights.update(st_read(os.path.join(d, fn)))
    else:
        weights = st_read(os.path.join(d, "model.safetensors"))
    return cfg, weights

# ---------------------------------------------------------------- the model

TARGETS = ("wqkv", "wo", "w1", "w2", "w3")


def peft_key(layer, mod, ab):
    part = "attention" if mod in ("wqkv", "wo") else "feed_forward"
    return "base_model.model.model.layers.%d.%s.%s.lora_%s.weight" % (layer, part, mod, ab)


class InternLM2LoRA:
    def __init__(self, cfg, weights, r, alpha, dropout, weights_mode, b_init, seed):
        self.D = cfg["hidden_size"]
        self.H = cfg["num_attention_heads"]
        self.KV = cfg.get("num_key_value_heads") or self.H
        self.G = self.H // self.KV
        self.hd = self.D // self.H
        self.L = cfg["num_hidden_layers"]
        self.V = cfg["vocab_size"]
        self.eps = cfg.get("rms_norm_eps", 1e-6)
        self.theta = cfg.get("rope_theta", 10000.0)
        self.max_pos = cfg.get("max_position_embeddings", 2048)
        self.rope_scaling = cfg.get("rope_scaling")
        if cfg.get("bias"):
            raise SystemExit("torch_lora_step: models with biases are not supported here")
        self.r, self.scale, self.dropout = r, alpha / r, dropout

        def w(name):
            t = weights.pop(name)
            return t.float() if weights_mode == "f32" else t
        self.embed = w("model.tok_embeddings.weight")
        self.layers = []
        for i in range(self.L):
            p = "model.layers.%d." % i
            self.layers.append({
                "attention_norm": weights.pop(p + "attention_norm.weight").float(),
                "ffn_norm": weights.pop(p + "ffn_norm.weight").float(),
                "wqkv": w(p + "attention.wqkv.weight"), "wo": w(p + "attention.wo.weight"),
                "w1": w(p + "feed_forward.w1.weight"), "w3": w(p + "feed_forward.w3.weight"),
                "w2": w(p + "feed_forward.w2.weight")})
        self.norm = weights.pop("model.norm.weight").float()
        self.output = w("output.weight")
        # LoRA: A [r, in] ~ U(+-1/sqrt(in)) (kaiming_uniform_ a=sqrt(5)), B [out, r]
        g = torch.Generator().manual_seed(seed)
        self.lora = []
        for lyr in self.layers:
            d = {}
            for m in TARGETS:
                out_f, in_f = lyr[m].shape
                bound = 1.0 / math.sqrt(in_f)
                a = (torch.rand(r, in_f, generator=g) * 2 - 1) * bound
                if b_init == "random":
                    b = (torch.rand(out_f, r, generator=g) * 2 - 1) * 1e-3
                else:
                    b = torch.zeros(out_f, r)
                d[m] = (a.requires_grad_(), b.requires_grad_())
            self.lora.append(d)

    def params(self):
        return [t for d in self.lora for m in TARGETS for t in d[m]]

    def n_params(self):
        return sum(t.numel() for t in self.params())

    def save_adapter(self, d, base_model):
        os.makedirs(d, exist_ok=True)
        tensors = {}
        for i, lo in enumerate(self.lora):
            for m in TARGETS:
                tensors[peft_key(i, m, "A")], tensors[peft_key(i, m, "B")] = lo[m]
        st_write(os.path.join(d, "adapter_model.safetensors"), tensors, {"format": "pt"})
        cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": self.r,
               "lora_alpha": self.scale * self.r, "lora_dropout": self.dropout,
               "target_modules": list(TARGETS), "bias": "none", "use_rslora": False,
               "fan_in_fan_out": False, "base_model_name_or_path": base_model,
               "inference_mode": False}
        with open(os.path.join(d, "adapter_config.json"), "w") as f:
            json.dump(cfg, f, indent=2)

    def load_adapter(self, d):
        t = st_read(os.path.join(d, "adapter_model.safetensors"))
        with torch.no_grad():
            for i, lo in enumerate(self.lora):
                for m in TARGETS:
                    lo[m][0].copy_(t[peft_key(i, m, "A")].float())
                    lo[m][1].copy_(t[peft_key(i, m, "B")].float())

    # -- ops

    @staticmethod
    def f32(w):
        return w if w.dtype == torch.float32 else w.float()

    def linear(self, x, w, lora):
        """x W^T + s (drop(x) A^T) B^T;  (T x in) -> (T x out)."""
        y = F.linear(x, self.f32(w))                                   # x W^T, as nn.Linear
        if lora is not None:                                           # as PEFT's lora.Linear
            a, b = lora
            xd = F.dropout(x, self.dropout, True) if self.dropout > 0 else x
            y = y + F.linear(F.linear(xd, a), b) * self.scale
        return y

    def rmsnorm(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def rope_tables(self, pos, longest):
        """cos, sin (T x hd) for the positions pos (T)."""
        base, p = self.theta, pos.to(torch.float32)
        sc = self.rope_scaling or {}
        kind = sc.get("type") or sc.get("rope_type")
        if kind == "linear":
            p = p / sc["factor"]
        elif kind == "dynamic" and longest > self.max_pos:
            f = sc["factor"]
            base = base * ((f * longest / self.max_pos) - (f - 1)) ** (self.hd / (self.hd - 2))
        inv = 1.0 / (base ** (torch.arange(0, self.hd, 2, dtype=torch.int64).float() / self.hd))
        fr = p[:, None] * inv[None, :]
        emb = torch.cat((fr, fr), dim=-1)
        return emb.cos(), emb.sin()

    @staticmethod
    def rotate_half(x):
        h = x.shape[-1] // 2
        return torch.cat((-x[..., h:], x[..., :h]), dim=-1)

    def layer(self, h, i, cos, sin, mask):
        """One decoder layer on h (B, T, D); mask (B, 1, T, T) additive."""
        lyr, lo = self.layers[i], self.lora[i]
        B, T, D = h.shape
        x = self.rmsnorm(h, lyr["attention_norm"])
        qkv = self.linear(x, lyr["wqkv"], lo["wqkv"]).view(B, T, self.KV, self.G + 2, self.hd)
        q = qkv[:, :, :, :self.G, :].reshape(B, T, self.H, self.hd)    # head g*G+i -> kv g
        k = qkv[:, :, :, self.G, :]                                     # (B, T, KV, hd)
        v = qkv[:, :, :, self.G + 1, :]
        q = q * cos[:, :, None, :] + self.rotate_half(q) * sin[:, :, None, :]
        k = k * cos[:, :, None, :] + self.rotate_half(k) * sin[:, :, None, :]
        q = q.transpose(1, 2)                                           # (B, H, T, hd)
        k = k.transpose(1, 2).repeat_interleave(self.G, dim=1)
        v = v.transpose(1, 2).repeat_interleave(self.G, dim=1)
        s = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.hd)) + mask  # (B, H, T, T)
        o = torch.matmul(torch.softmax(s, dim=-1), v)                   # (B, H, T, hd)
        o = o.transpose(1, 2).reshape(B, T, D)
        h = h + self.linear(o, lyr["wo"], lo["wo"])
        x = self.rmsnorm(h, lyr["ffn_norm"])
        g = self.linear(x, lyr["w1"], lo["w1"])
        u = self.linear(x, lyr["w3"], lo["w3"])
        return h + self.linear(F.silu(g) * u, lyr["w2"], lo["w2"])

    def forward_loss(self, ids, pos, seg, labels, checkpointing, reduction="mean"):
        """ids/pos/seg/labels (B, T) int64; labels already shifted (-100 = no
        target). Returns the mean NLL over targets (or per-token NLL, B*T)."""
        B, T = ids.shape
        h = F.embedding(ids, self.embed).float()   # gathers rows first: no f32 copy of the table
        longest = int(torch.bincount(seg[seg >= 0].flatten()).max()) if (seg >= 0).any() else T
        cos, sin = self.rope_tables(pos.flatten(), longest)
        cos, sin = cos.view(B, T, self.hd), sin.view(B, T, self.hd)
        ar = torch.arange(T)
        allowed = (seg[:, :, None] == seg[:, None, :]) & (ar[None, :, None] >= ar[None, None, :])
        allowed |= torch.eye(T, dtype=torch.bool)[None]                  # padding attends to itself
        mask = torch.zeros(B, 1, T, T).masked_fill(~allowed[:, None], float("-inf"))
        for i in range(self.L):
            if checkpointing and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(self.layer, h, i, cos, sin, mask, use_reentrant=False)
            else:
                h = self.layer(h, i, cos, sin, mask)
        h = self.rmsnorm(h, self.norm)
        logits = self.linear(h, self.output, None).view(B * T, self.V)
        return F.cross_entropy(logits, labels.flatten(), ignore_index=-100, reduction=reduction)

# ---------------------------------------------------------------- data


def read_records(path):
    recs = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                recs.append(json.loads(line)["input_ids"])
    if not recs:
        raise SystemExit("torch_lora_step: %s holds no record" % path)
    return recs


def pack(recs, seq):
    """Records -> rows (ids, pos, seg, shifted labels) of seq tokens, in order.
    Also returns, per record, (row, first, length) for per-sample sums."""
    rows, where, cur = [], [], []

    def flush():
        ids = [0] * seq
        pos = [0] * seq
        seg = [-1] * seq
        lab = [-100] * seq
        t = 0
        for s, r in enumerate(cur):
            for j, tok in enumerate(r):
                ids[t + j], pos[t + j], seg[t + j] = tok, j, s
                if j + 1 < len(r):
                    lab[t + j] = r[j + 1]
            t += len(r)
        rows.append((ids, pos, seg, lab))
        cur.clear()

    used = 0
    for r in recs:
        r = r[:seq]
        if used + len(r) > seq:
            flush()
            used = 0
        where.append((len(rows), used, len(r)))
        cur.append(r)
        used += len(r)
    if cur:
        flush()
    return rows, where


def to_batch(rows):
    cols = list(zip(*rows))
    return [torch.tensor(c, dtype=torch.int64) for c in cols]   # ids, pos, seg, labels (B, T)

# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="HF model directory (config.json, model.safetensors)")
    ap.add_argument("--data", help="pretokenized JSONL ({\"input_ids\": [...]}); default: random ids")
    ap.add_argument("--seq", type=int, default=256, help="tokens per row (max_length)")
    ap.add_argument("--batch", type=int, default=1, help="rows per step")
    ap.add_argument("--steps", type=int, default=5, help="training steps (the first is a warm-up)")
    ap.add_argument("--rows", type=int, default=1, help="random rows when --data is absent")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--checkpointing", type=int, default=1, choices=(0, 1))
    ap.add_argument("--r", type=int, default=64)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--max-norm", type=float, default=1.0, help="0: no clipping")
    ap.add_argument("--weights", choices=("stored", "f32"), default="stored")
    ap.add_argument("--autocast", choices=("none", "bf16"), default="none",
                    help="bf16: forward under torch.autocast('cpu', torch.bfloat16)")
    ap.add_argument("--b-init", choices=("zeros", "random"), default="zeros")
    ap.add_argument("--save-adapter", help="write the initial LoRA weights here (PEFT format)")
    ap.add_argument("--load-adapter", help="start from this PEFT adapter's A/B")
    ap.add_argument("--eval-only", action="store_true", help="loss of --data packed into rows, no training")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    cfg, weights = load_model_dir(a.model)
    wdtype = str(weights["model.layers.0.attention.wqkv.weight"].dtype).replace("torch.", "")
    m = InternLM2LoRA(cfg, weights, a.r, a.alpha, a.dropout, a.weights, a.b_init, a.seed)
    del weights
    if a.load_adapter:
        m.load_adapter(a.load_adapter)
    if a.save_adapter:
        m.save_adapter(a.save_adapter, os.path.abspath(a.model))

    if a.data:
        rows, where = pack(read_records(a.data), a.seq)
    else:
        g = torch.Generator().manual_seed(a.seed)
        recs = [torch.randint(3, m.V, (a.seq,), generator=g).tolist() for _ in range(a.rows)]
        rows, where = pack(recs, a.seq)

    if a.eval_only:
        with torch.no_grad():
            ids, pos, seg, lab = to_batch(rows)
            nll = m.forward_loss(ids, pos, seg, lab, False, reduction="none").view(len(rows), a.seq).double()
        samples = []
        for (row, first, n) in where:
            samples.append({"nll_sum": float(nll[row, first:first + n].sum()), "tokens": n - 1})
        tot, cnt = sum(s["nll_sum"] for s in samples), sum(s["tokens"] for s in samples)
        print(json.dumps({"loss": tot / cnt, "tokens": cnt, "samples": samples}))
        return

    opt = torch.optim.AdamW(m.params(), lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    losses, step_s, tokens = [], [], []
    for step in range(a.steps):
        batch = [rows[(step * a.batch + j) % len(rows)] for j in range(a.batch)]
        ids, pos, seg, lab = to_batch(batch)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.autocast == "bf16"):
            loss = m.forward_loss(ids, pos, seg, lab, bool(a.checkpointing))
        loss.backward()
        if a.max_norm > 0:
            torch.nn.utils.clip_grad_norm_(m.params(), a.max_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step_s.append(time.perf_counter() - t0)
        losses.append(float(loss))
        tokens.append(int((seg >= 0).sum()))
    timed = step_s[1:] if len(step_s) > 1 else step_s
    ttok = tokens[1:] if len(tokens) > 1 else tokens
    print(json.dumps({
        "impl": "torch", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "model": os.path.abspath(a.model), "weights_dtype": wdtype, "weights_mode": a.weights,
        "seq": a.seq, "batch": a.batch, "steps": a.steps, "checkpointing": a.checkpointing,
        "autocast": a.autocast,
        "r": a.r, "alpha": a.alpha, "dropout": a.dropout, "lora_params": m.n_params(),
        "tokens_per_s": sum(ttok) / sum(timed), "peak_rss_mb": rss_mb(), "base_rss_mb": BASE_RSS_MB,
        "losses": losses, "step_s": step_s}))


if __name__ == "__main__":
    main()
