#!/usr/bin/env python3
"""Writes tests/data/bnb_dynamic_map.txt: bitsandbytes' 8-bit dynamic map, the
one that double quantization (compress_statistics=True) codes absmax with and
that a checkpoint stores as *.weight.nested_quant_map.

usage: gen_dynamic_map.py [--linspace=torch|rule] [OUT]   (OUT default: stdout)

Run by hand; the test (tests/autograd/test_quant.c, test_dynamic_map_pinned)
reads the checked-in output and needs no Python. Needs torch; with PyPI's
bitsandbytes importable it takes the map from bitsandbytes itself and checks
the copy below against it.

create_dynamic_map() below is bitsandbytes' own algorithm, copied from
bitsandbytes/functional.py (bitsandbytes 0.50.2; unchanged since 0.37 in the
lines used here: signed=True, max_exponent_bits=7, total_bits=8, so
additional_items = 0 and fraction_items = 2^i + 1):

    for i in range(max_exponent_bits):
        fraction_items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1 ...)
        boundaries = torch.linspace(0.1, 1, fraction_items)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    data.append(0); data.append(1.0); data.sort(); return Tensor(data)

The map depends on how torch.linspace rounds in fp32. Current torch's CPU
kernel (aten/src/ATen/native/cpu/RangeFactoriesKernel.cpp, a scalar loop since
torch 2.0) computes step = (end - start) / (steps - 1) in fp32 and element i as
start + step*i below steps//2, end - step*(steps-1-i) from there on, and the
AVX2/AVX-512 builds that x86 CPUs run contract each into one fused
multiply-add: one rounding per element. Older torch (1.x, e.g. Debian's
python3-torch 1.13) filled whole vectors with Vectorized::arange, which
rounds differently in some entries. --linspace=rule replaces torch.linspace by
that one-rounding rule, computed exactly (all terms are multiples of 2^-30 in
[0, 1], exact in double) and rounded to fp32 once; --linspace=torch (the
default) uses this torch's linspace and stops if it does not follow the rule,
unless bitsandbytes is there to say which map is right. (torch 2.x run with
ATEN_CPU_CAPABILITY=default does not fuse either, and bitsandbytes' map then
differs from the rule in 42 entries: the script refuses to write that one.)
"""
import struct
import sys
from fractions import Fraction

import torch


def rule_linspace(start, end, steps):
    """torch.linspace(start, end, steps, dtype=float32) with one rounding per element."""
    f32 = lambda x: struct.unpack("<f", struct.pack("<f", x))[0]  # round to nearest even
    start, end = f32(start), f32(end)
    step = f32(f32(end - start) / (steps - 1))  # fp32 (end - start) / (steps - 1)
    out = []
    for i in range(steps):
        if i < steps // 2:
            exact = Fraction(start) + Fraction(step) * i
        else:
            exact = Fraction(end) - Fraction(step) * (steps - 1 - i)
        d = float(exact)
        assert Fraction(d) == exact, "not exact in double"  # so d -> fp32 rounds once
        out.append(f32(d))
    return torch.tensor(out, dtype=torch.float32)


def create_dynamic_map(linspace, signed=True, max_exponent_bits=7, total_bits=8):
    """bitsandbytes.functional.create_dynamic_map, linspace passed in."""
    data = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        fraction_items = int(
            2 ** (i + non_sign_bits - max_exponent_bits) + 1
            if signed
            else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1
        )
        boundaries = linspace(0.1, 1, fraction_items)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    if additional_items > 0:
        boundaries = linspace(0.1, 1, additional_items + 1)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    data.append(0)
    data.append(1.0)
    assert len(data) == 2**total_bits
    data += [0] * (256 - len(data))
    data.sort()
    return torch.tensor(data, dtype=torch.float32)


def bits(t):
    return [struct.unpack("<I", struct.pack("<f", float(v)))[0] for v in t.tolist()]


def ndiff(a, b):
    return sum(x != y for x, y in zip(bits(a), bits(b)))


def main(argv):
    mode, out = "torch", None
    for a in argv:
        if a.startswith("--linspace="):
            mode = a.split("=", 1)[1]
            if mode not in ("torch", "rule"):
                sys.exit("--linspace=torch or --linspace=rule")
        elif out is None:
            out = a
        else:
            sys.exit(__doc__)

    torch_lin = lambda s, e, n: torch.linspace(s, e, n, dtype=torch.float32)
    from_torch = create_dynamic_map(torch_lin)
    from_rule = create_dynamic_map(rule_linspace)
    lin_bad = sum(ndiff(torch_lin(0.1, 1, 2**i + 1), rule_linspace(0.1, 1, 2**i + 1)) for i in range(7))
    notes = [
        f"torch {torch.__version__}: torch.linspace {'follows' if lin_bad == 0 else 'does NOT follow'} "
        f"the one-rounding rule ({lin_bad} boundaries differ); map from torch.linspace vs from the "
        f"rule: {ndiff(from_torch, from_rule)} of 256 entries differ"
    ]
    try:
        import bitsandbytes
        import bitsandbytes.functional as F

        bnb = F.create_dynamic_map(signed=True).float().cpu()
        d_torch, d_rule = ndiff(bnb, from_torch), ndiff(bnb, from_rule)
        notes.append(
            f"bitsandbytes {bitsandbytes.__version__} is importable: its create_dynamic_map(signed=True) "
            f"vs the copy with torch.linspace: {d_torch} entries differ, with the rule: {d_rule}"
        )
        if d_torch:
            sys.exit("the copy of create_dynamic_map disagrees with bitsandbytes':\n" + "\n".join(notes))
        if d_rule:
            # e.g. ATEN_CPU_CAPABILITY=default or a CPU without FMA: torch's linspace then rounds
            # twice, and bitsandbytes' map differs from the one every AVX2 machine makes
            sys.exit("\n".join(notes) + "\nthis torch's linspace does not fuse (no AVX2/FMA kernel?): "
                     "not writing that map")
        cap = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: "?")()
        chosen = bnb
        source = (f"bitsandbytes {bitsandbytes.__version__} create_dynamic_map(signed=True) "
                  f"(torch {torch.__version__}, CPU capability {cap})")
    except ImportError:
        notes.append("bitsandbytes is not importable: no cross-check against bitsandbytes itself")
        if mode == "torch":
            if lin_bad:
                sys.exit("\n".join(notes) + "\nthis torch's linspace is not the one bitsandbytes' map comes "
                         "from; use --linspace=rule or a current torch")
            chosen = from_torch
            source = f"the copy of create_dynamic_map with torch {torch.__version__}'s linspace"
        else:
            chosen = from_rule
            source = "the copy of create_dynamic_map with the one-rounding linspace rule"
    for n in notes:
        print(n, file=sys.stderr)

    lines = [
        "# bitsandbytes create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):",
        "# 256 float32 bit patterns, ascending; written by tests/autograd/gen_dynamic_map.py from",
        f"# {source}.",
    ]
    lines += ["# " + n for n in notes]
    lines += [f"0x{b:08x}" for b in bits(chosen)]
    text = "\n".join(lines) + "\n"
    if out:
        with open(out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main(sys.argv[1:])
