#!/usr/bin/env python3
"""The Python peer of bench/bench_gpu.sh: Hugging Face transformers + PEFT +
bitsandbytes QLoRA on the very model ctuner trains, converted to the Llama
layout, with the same data and settings; prints one JSON line.

The model: a ctuner / Hugging Face InternLM2 directory (safetensors, one file
or shards + index), full precision or a bitsandbytes 4-bit checkpoint (what
`ctuner make-model --quantize nf4` and `ctuner quantize` write). Each tensor
is read on its own, 4-bit ones dequantized here (torch only: code value x
block absmax, the absmax itself from its 8-bit code x nested absmax + offset
with double quantization, as bitsandbytes and ctuner dequantize), renamed and
split into LlamaForCausalLM's layout:
    model.tok_embeddings          -> model.embed_tokens
    layers.L.attention.wqkv       -> self_attn.q_proj, k_proj, v_proj
        (its rows, per KV head g: G = heads / kv_heads query heads, then k_g,
         then v_g, each head_dim rows; modeling_internlm2's
         "b q (h gs d) -> b q h gs d" with gs = G + 2; query head g*G + j is
         Llama's head g*G + j, which shares KV head g as Llama's GQA does)
    layers.L.attention.wo         -> self_attn.o_proj
    layers.L.feed_forward.w1/w3/w2 -> mlp.gate_proj / up_proj / down_proj
    layers.L.attention_norm / ffn_norm -> input_layernorm / post_attention_layernorm
    model.norm -> model.norm, output -> lm_head
InternLM2's RoPE is Llama's (rotate_half over the whole head_dim, theta from
the config), SwiGLU and RMSNorm likewise; only the names and the fused wqkv
differ. The model is built on the meta device and filled tensor by tensor: a
7B model never exists at 16 bits in memory, and nothing is written to disk.

Training (default): the block linears become bitsandbytes Linear4bit
(NF4, double quantization, blocksize 64, bf16 compute: BitsAndBytesConfig's
QLoRA settings), quantized by bitsandbytes on the device from the dequantized
weights (the same codes wherever bf16 rounding does not move a value across
a code boundary); then PEFT's standard QLoRA recipe:
prepare_model_for_kbit_training (gradient checkpointing, non-reentrant),
LoraConfig(r, alpha, dropout, q/k/v/o/gate/up/down = ctuner's wqkv, wo, w1,
w3, w2), torch.optim.AdamW over the LoRA weights (lr 2e-4, betas 0.9/0.999,
no weight decay), gradient clipping at --max-norm, the forward under
torch.autocast(bfloat16) (--compute bfloat16). Attention is PyTorch's SDPA.
Data: --data FILE.jsonl of pretokenized records {"input_ids": [...]} of
exactly --seq tokens (what bench_gpu.sh writes: one sample per row, so
plain causal attention is ctuner's packed attention); step i trains record
i mod N, labels = input_ids (every next token, as ctuner's pretokenized
format without "labels"). --warmup steps first, then --steps timed ones
(torch.cuda.synchronize around each).

Output: {"impl": "peer", "tokens_per_s", "step_s" (mean of the timed steps),
"step_times", "losses" (every step), "peak_alloc_mib"
(torch.cuda.max_memory_allocated over the training steps: reset after the
model is built), "peak_reserved_mib", "model_alloc_mib" (allocated once the
model is built), "peak_rss_mib" (the process's), "load_s", "versions", the
settings}.

--eval-only: no training, no quantization: each --model converted, in --dtype
(float32 by default) on --device; for each record of --data one forward, and
one line {"model", "loss", "tokens", "samples": [{"nll_sum", "tokens"}]} per
model, the numbers `ctuner eval --json` prints (the check that the conversion is ctuner's model:
bench/check_peer_convert.sh).
"""
import argparse
import json
import os
import resource
import sys
import time


def log(*a):
    print("peer_qlora:", *a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- reading

class Checkpoint:
    """A model directory's safetensors tensors by name (one file or shards)."""

    def __init__(self, model_dir):
        from safetensors import safe_open
        idx = os.path.join(model_dir, "model.safetensors.index.json")
        if os.path.exists(idx):
            files = sorted(set(json.load(open(idx))["weight_map"].values()))
        else:
            files = ["model.safetensors"]
        self.handles = [safe_open(os.path.join(model_dir, f), framework="pt", device="cpu") for f in files]
        self.where = {}
        for h in self.handles:
            for k in h.keys():
                self.where[k] = h

    def has(self, name):
        return name in self.where

    def get(self, name):
        return self.where[name].get_tensor(name)


def bnb_state(ck, name):
    """The quant_state JSON of a 4-bit weight, or None for a plain tensor."""
    for t in ("nf4", "fp4"):
        key = "%s.quant_state.bitsandbytes__%s" % (name, t)
        if ck.has(key):
            return json.loads(bytes(ck.get(key).tolist()).decode())
    return None


def dequantize(ck, name, st, device):
    """A bitsandbytes 4-bit weight in f32 [rows, cols] on device."""
    import torch
    rows, cols = st["shape"]
    n, bs = rows * cols, st["blocksize"]
    codes = ck.get(name).reshape(-1).to(device)
    idx = torch.stack([codes >> 4, codes & 15], dim=1).reshape(-1)[:n].long()  # high nibble first
    qmap = ck.get(name + ".quant_map").to(device=device, dtype=torch.float32)
    if "nested_blocksize" in st:
        qa = ck.get(name + ".absmax").to(device).long()
        nq = ck.get(name + ".nested_quant_map").to(device=device, dtype=torch.float32)
        na = ck.get(name + ".nested_absmax").to(device=device, dtype=torch.float32)
        blocks = torch.arange(qa.numel(), device=device) // st["nested_blocksize"]
        absmax = nq[qa] * na[blocks] + torch.tensor(st["nested_offset"], dtype=torch.float32, device=device)
    else:
        absmax = ck.get(name + ".absmax").to(device=device, dtype=torch.float32)
    w = qmap[idx] * absmax.repeat_interleave(bs)[:n]
    return w.reshape(rows, cols)


def read_weight(ck, name, device, dtype):
    """Any weight in `dtype` on device (4-bit ones dequantized)."""
    st = bnb_state(ck, name)
    if st is not None:
        return dequantize(ck, name, st, device).to(dtype)
    return ck.get(name).to(device=device, dtype=dtype)


# ---------------------------------------------------------------- the Llama model

def llama_config(cfg):
    from transformers import LlamaConfig
    D, H = cfg["hidden_size"], cfg["num_attention_heads"]
    scaling = cfg.get("rope_scaling")
    if scaling not in (None, {}):
        raise SystemExit("peer_qlora: rope_scaling %r: only configs without rope scaling are converted" % scaling)
    theta = float(cfg.get("rope_theta", 10000.0))
    kw = dict(vocab_size=cfg["vocab_size"], hidden_size=D, intermediate_size=cfg["intermediate_size"],
              num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=H,
              num_key_value_heads=cfg.get("num_key_value_heads") or H, head_dim=D // H, hidden_act="silu",
              max_position_embeddings=cfg.get("max_position_embeddings", 2048),
              rms_norm_eps=cfg.get("rms_norm_eps", 1e-6), tie_word_embeddings=cfg.get("tie_word_embeddings", False),
              attention_bias=False, mlp_bias=False, bos_token_id=cfg.get("bos_token_id", 1),
              eos_token_id=cfg.get("eos_token_id", 2), pad_token_id=cfg.get("pad_token_id"), use_cache=False,
              rope_theta=theta)
    c = LlamaConfig(**kw)
    # transformers 5 keeps RoPE settings in rope_parameters (4.x: rope_theta)
    rp = getattr(c, "rope_parameters", None)
    if isinstance(rp, dict):
        rp["rope_theta"] = theta
        rp.setdefault("rope_type", "default")
    got = rp.get("rope_theta") if isinstance(rp, dict) else getattr(c, "rope_theta", None)
    if got is None or abs(float(got) - theta) > 1e-6 * theta:
        raise SystemExit("peer_qlora: LlamaConfig did not take rope_theta %g (has %r)" % (theta, got))
    c._attn_implementation = "sdpa"
    return c


LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def layer_weights(ck, cfg, layer, device, dtype):
    """Llama-named weights of one layer: {suffix: tensor}."""
    H, KV = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    D = cfg["hidden_size"]
    hd, G = D // H, H // KV
    p = "model.layers.%d." % layer
    if cfg.get("bias"):
        raise SystemExit("peer_qlora: InternLM2 with bias: not converted")
    qkv = read_weight(ck, p + "attention.wqkv.weight", device, dtype).reshape(KV, G + 2, hd, D)
    out = {
        "self_attn.q_proj": qkv[:, :G].reshape(KV * G * hd, D).contiguous(),
        "self_attn.k_proj": qkv[:, G].reshape(KV * hd, D).contiguous(),
        "self_attn.v_proj": qkv[:, G + 1].reshape(KV * hd, D).contiguous(),
    }
    del qkv
    out["self_attn.o_proj"] = read_weight(ck, p + "attention.wo.weight", device, dtype)
    out["mlp.gate_proj"] = read_weight(ck, p + "feed_forward.w1.weight", device, dtype)
    out["mlp.up_proj"] = read_weight(ck, p + "feed_forward.w3.weight", device, dtype)
    out["mlp.down_proj"] = read_weight(ck, p + "feed_forward.w2.weight", device, dtype)
    out["input_layernorm"] = read_weight(ck, p + "attention_norm.weight", device, dtype)
    out["post_attention_layernorm"] = read_weight(ck, p + "ffn_norm.weight", device, dtype)
    return out


def build_model(model_dir, device, dtype, quantize):
    """LlamaForCausalLM with the converted weights on device; the block
    linears as bitsandbytes NF4 Linear4bit when quantize."""
    import torch
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from transformers import LlamaForCausalLM
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    ck = Checkpoint(model_dir)
    lc = llama_config(cfg)
    with init_empty_weights(include_buffers=False):
        model = LlamaForCausalLM(lc)
    if quantize:
        import bitsandbytes as bnb
    def put(name, value):  # dtype given: accelerate would cast to the meta parameter's float32
        set_module_tensor_to_device(model, name, device, value=value, dtype=value.dtype)
    put("model.embed_tokens.weight", read_weight(ck, "model.tok_embeddings.weight", device, dtype))
    put("model.norm.weight", read_weight(ck, "model.norm.weight", device, dtype))
    if not lc.tie_word_embeddings:
        put("lm_head.weight", read_weight(ck, "output.weight", device, dtype))
    for layer in range(cfg["num_hidden_layers"]):
        mod = model.model.layers[layer]
        for suffix, w in layer_weights(ck, cfg, layer, device, dtype).items():
            parent, leaf = suffix.split(".") if "." in suffix else ("", suffix)
            if quantize and leaf in LINEARS:
                owner = getattr(mod, parent)
                old = getattr(owner, leaf)
                q = bnb.nn.Linear4bit(old.in_features, old.out_features, bias=False, compute_dtype=torch.bfloat16,
                                      compress_statistics=True, quant_type="nf4", quant_storage=torch.uint8,
                                      device="meta")
                q.weight = bnb.nn.Params4bit(w.to(torch.bfloat16), requires_grad=False, blocksize=64,
                                             compress_statistics=True, quant_type="nf4", quant_storage=torch.uint8,
                                             module=q).to(device)  # bitsandbytes quantizes here
                setattr(owner, leaf, q)
            else:
                put("model.layers.%d.%s.weight" % (layer, suffix), w)
            del w
    for name, buf in list(model.named_buffers()):
        set_module_tensor_to_device(model, name, device, value=buf.to(device))
    left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if left:
        raise SystemExit("peer_qlora: parameters left unfilled: %s" % ", ".join(left[:5]))
    if quantize:
        model.is_loaded_in_4bit = True  # what from_pretrained(quantization_config=...) sets; PEFT reads it
        model.quantization_method = "bitsandbytes"
    return model, cfg


# ---------------------------------------------------------------- runs

def read_rows(path):
    return [json.loads(l)["input_ids"] for l in open(path) if l.strip()]


def eval_only(a):
    """One JSON line per --model (one process for several: imports are slow)."""
    import torch
    dtype = getattr(torch, a.dtype)
    for path in a.model:
        model, _ = build_model(path, a.device, dtype, quantize=False)
        model.eval()
        samples = []
        with torch.no_grad():
            for ids in read_rows(a.data):
                x = torch.tensor([ids], device=a.device)
                logits = model(input_ids=x).logits.float()[0]
                nll = torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:], reduction="sum")
                samples.append({"nll_sum": float(nll), "tokens": len(ids) - 1})
        tot, cnt = sum(s["nll_sum"] for s in samples), sum(s["tokens"] for s in samples)
        print(json.dumps({"model": path, "loss": tot / cnt, "tokens": cnt, "samples": samples}), flush=True)
        del model


def train(a):
    import torch
    import peft
    import transformers
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    cuda = a.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(a.seed)
    t0 = time.time()
    model, cfg = build_model(a.model[0], a.device, torch.bfloat16, quantize=True)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    lcfg = LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout, bias="none", task_type="CAUSAL_LM",
                      target_modules=list(LINEARS))
    model = get_peft_model(model, lcfg)
    n_4bit = sum(1 for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    want = cfg["num_hidden_layers"] * len(LINEARS)
    if n_4bit != want:
        raise SystemExit("peer_qlora: %d Linear4bit modules, expected %d" % (n_4bit, want))
    params = [p for p in model.parameters() if p.requires_grad]
    n_lora = sum(p.numel() for p in params)
    model.train()
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    rows = read_rows(a.data)
    if any(len(r) != a.seq for r in rows):
        raise SystemExit("peer_qlora: every record of %s must hold exactly --seq %d ids" % (a.data, a.seq))
    sync()
    load_s = time.time() - t0
    model_alloc = torch.cuda.memory_allocated() / 2**20 if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    autocast = (torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16)
                if a.compute == "bfloat16" else torch.autocast(device_type="cpu", enabled=False))
    losses, times = [], []
    for step in range(a.warmup + a.steps):
        ids = torch.tensor([rows[step % len(rows)]], device=a.device)
        sync()
        ts = time.perf_counter()
        with autocast:
            out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, a.max_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - ts)
        losses.append(float(out.loss.detach()))
        log("step %d: loss %.5f, %.3f s" % (step, losses[-1], times[-1]))
    timed = times[a.warmup:]
    step_s = sum(timed) / len(timed)
    res = {"impl": "peer", "model": a.model[0], "device": a.device, "seq": a.seq, "batch": 1,
           "tokens_per_s": a.seq / step_s, "step_s": step_s, "step_times": times, "losses": losses,
           "warmup": a.warmup, "steps": a.steps, "load_s": load_s, "lora_params": n_lora,
           "r": a.r, "alpha": a.alpha, "dropout": a.dropout, "compute": a.compute,
           "attn_implementation": getattr(model.config, "_attn_implementation", None),
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "peft": peft.__version__, "bitsandbytes": bnb.__version__}}
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if cuda:
        res.update(peak_alloc_mib=torch.cuda.max_memory_allocated() / 2**20,
                   peak_reserved_mib=torch.cuda.max_memory_reserved() / 2**20, model_alloc_mib=model_alloc,
                   gpu=torch.cuda.get_device_name())
    print(json.dumps(res), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, action="append",
                    help="ctuner/HF InternLM2 directory (full precision or bnb 4-bit); --eval-only takes several")
    ap.add_argument("--data", required=True, help="pretokenized jsonl, records of exactly --seq ids")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--r", type=int, default=64)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--max-norm", type=float, default=1.0)
    ap.add_argument("--compute", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-only", action="store_true", help="per-record losses of the converted model, no training")
    ap.add_argument("--dtype", default="float32", help="--eval-only: the model's dtype (float32, bfloat16)")
    a = ap.parse_args()
    if a.eval_only:
        eval_only(a)
    elif len(a.model) > 1:
        ap.error("training takes one --model")
    else:
        train(a)


if __name__ == "__main__":
    main()
