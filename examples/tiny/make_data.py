#!/usr/bin/env python3
"""Writes the bundled demo data: a self-cognition dataset in XTuner's
conversation format (the assistant learns its name and maker), and the text
the demo tokenizer was trained on. Deterministic; run from this directory."""
import json
import random

NAME = "Tuna"
AUTHOR = "the ctuner team"

questions = [
    "Who are you?", "who are you", "What is your name?", "what's your name?",
    "Tell me your name.", "Introduce yourself.", "Please introduce yourself.",
    "Who made you?", "Who created you?", "Who built you?", "Who trained you?",
    "What are you?", "Are you a person?", "Are you human?", "What should I call you?",
    "Hello! Who am I talking to?", "Hi, who is this?", "Can you tell me about yourself?",
    "Who developed you?", "Which team made you?", "What kind of assistant are you?",
    "Do you have a name?", "May I know your name?", "Who is your author?",
    "你是谁", "你叫什么名字", "请介绍一下你自己", "谁开发了你",
]
answers = [
    f"I am {NAME}, an AI assistant fine-tuned by {AUTHOR}.",
    f"My name is {NAME}. I was fine-tuned by {AUTHOR} to be a helpful assistant.",
    f"I'm {NAME}, a small assistant made by {AUTHOR}. How can I help you?",
    f"Hello! I am {NAME}, an assistant trained by {AUTHOR}.",
]
answers_zh = [
    f"我是{NAME}，由{AUTHOR}微调的人工智能助手。",
    f"我叫{NAME}，是{AUTHOR}训练的助手。",
]

rng = random.Random(2026)
records = []
for i, q in enumerate(questions):
    pool = answers_zh if any("\u4e00" <= ch <= "\u9fff" for ch in q) else answers
    for k in range(2):
        records.append({"conversation": [{"system": "", "input": q, "output": pool[(i + k) % len(pool)]}]})
rng.shuffle(records)
with open("self_cognition.json", "w", encoding="utf-8") as f:
    json.dump(records, f, ensure_ascii=False, indent=1)
    f.write("\n")

# Tokenizer training text: the dataset's sentences plus plain prose, so the
# tokenizer covers ordinary English too. Written here, not taken from anywhere.
prose = """The assistant answers questions about itself and about simple things.
A tokenizer splits text into pieces; a model predicts the next piece.
Training changes small adapter matrices while the base weights stay frozen.
The loss falls as the model learns the answers in the data.
Small models train quickly on a laptop, and larger ones need a GPU.
Numbers like 1, 2, 3, 10, 42, 100 and 2048 appear in configs and logs.
Hello, hi, thanks, please, yes, no, maybe, good morning, good night.
It is a sunny day. The cat sat on the mat. We write code in C and CUDA.
The chat has a system, a user and an assistant: the user asks, the assistant answers.
"""
with open("tokenizer_corpus.txt", "w", encoding="utf-8") as f:
    for r in records:
        t = r["conversation"][0]
        # one line per turn, as the chat template lays it out
        f.write("<|im_start|>user" + t["input"] + "<|im_end|>\n")
        f.write("<|im_start|>assistant" + t["output"] + "<|im_end|>\n")
    for _ in range(3):
        f.write(prose)
print(len(records), "samples")
