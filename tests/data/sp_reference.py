#!/usr/bin/env python3
"""Reference answers for tests/test_tokenizer.c from the sentencepiece package.

usage: sp_reference.py MODEL_FILE [TOKENIZER_CONFIG_JSON|-] < requests > answers

One request per line, one answer line per request:
  E <hex bytes>   -> "<sp.encode ids>|<HF-rule ids>|<hex of sp.decode(sp.encode)>"
  D <id,id,...>   -> "<hex of sp.decode(ids)>"   (empty list: "D")
  P               -> one line per piece: "id type score hex(piece)", then "END"
The HF rule (InternLM2Tokenizer, slow): [BOS if add_bos_token] + for each chunk
between special strings (matched whole, longest first) sp.encode(chunk), then
the special token's id. Special strings: added_tokens_decoder contents and the
bos/eos/unk/pad tokens (their id from added_tokens_decoder or the model); with
no config, the model's control and unknown pieces.
"""
import json
import sys

import sentencepiece as spm


def token_string(v):
    if isinstance(v, dict):
        v = v.get("content")
    return v


def main():
    sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
    cfg = {}
    if len(sys.argv) > 2 and sys.argv[2] != "-":
        with open(sys.argv[2], encoding="utf-8") as f:
            cfg = json.load(f)
    specials = {}
    if cfg:
        for k, v in (cfg.get("added_tokens_decoder") or {}).items():
            specials[v["content"].encode()] = int(k)
        for role in ("unk_token", "bos_token", "eos_token", "pad_token"):
            s = token_string(cfg.get(role))
            if s is None:
                continue
            if s.encode() not in specials:
                i = sp.piece_to_id(s)
                assert sp.id_to_piece(i) == s, f"{role} {s!r} not in the model"
                specials[s.encode()] = i
    else:
        for i in range(sp.get_piece_size()):
            if sp.is_control(i) or sp.is_unknown(i):
                specials[sp.id_to_piece(i).encode()] = i
    order = sorted(specials.items(), key=lambda kv: (-len(kv[0]), kv[1]))
    add_bos = cfg.get("add_bos_token", True) if cfg else True
    if cfg:
        b = token_string(cfg.get("bos_token", "<s>"))
        bos = specials.get(b.encode()) if b is not None else None
    else:
        bos = sp.bos_id() if sp.bos_id() >= 0 else None

    def hf_encode(b):
        ids = [bos] if add_bos and bos is not None else []
        i = chunk = 0
        while i < len(b):
            for s, sid in order:
                if b.startswith(s, i):
                    ids += sp.encode(b[chunk:i])
                    ids.append(sid)
                    i += len(s)
                    chunk = i
                    break
            else:
                i += 1
        return ids + sp.encode(b[chunk:])

    out = sys.stdout
    for line in sys.stdin:
        line = line.rstrip("\n")
        if line.startswith("E"):
            b = bytes.fromhex(line[2:])
            ids = sp.encode(b)
            dec = sp.decode(ids).encode("utf-8", "surrogatepass").hex()
            out.write(" ".join(map(str, ids)) + "|" + " ".join(map(str, hf_encode(b))) + "|" + dec + "\n")
        elif line.startswith("D"):
            ids = [int(x) for x in line[2:].split(",") if x]
            out.write(sp.decode(ids).encode("utf-8", "surrogatepass").hex() + "\n")
        elif line.startswith("P"):
            for i in range(sp.get_piece_size()):
                t = ("C" if sp.is_control(i) else "K" if sp.is_unknown(i) else "U" if sp.is_unused(i)
                     else "B" if sp.is_byte(i) else "N")
                out.write("%d %s %r %s\n" % (i, t, sp.get_score(i), sp.id_to_piece(i).encode().hex()))
            out.write("END\n")
    out.flush()


if __name__ == "__main__":
    main()
