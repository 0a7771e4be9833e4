"""In-segment copy of random digit strings (10 symbols, 5-20 long) at a random offset.

    python benchmarks/training/sanity_digits.py 2    # 2 layers; prints step, loss, accuracy, seconds

The model card's "sanity: digits" row: 98% accuracy by step 300.
"""
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
torch.set_num_threads(1)
from infini_cli.config import ModelConfig
from infini_cli.model import InfiniTransformer
from infini_cli.stream import train_forward
V = 64
L = int(sys.argv[1]) if len(sys.argv) > 1 else 2
cfg = ModelConfig(vocab_size=V, d_model=128, n_layers=L, n_heads=4, n_kv_heads=2, ffn_dim=256, segment_len=64)
m = InfiniTransformer(cfg).init_weights(0)
opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
rng = random.Random(0)
t0 = time.time()
for step in range(1, 3001):
    seqs, pos, tgt = [], [], []
    for b in range(32):
        n = rng.randint(5, 20); gap = rng.randint(0, 64 - 2 * (n + 1))
        d = [rng.randrange(10) for _ in range(n)]
        s = [10] + d + [rng.randrange(11, V) for _ in range(gap)] + [10] + d
        first = 1 + n + gap + 1
        for j in range(n - 1):
            pos.append((b, first + j)); tgt.append(d[j + 1])
        seqs.append(s + [rng.randrange(11, V) for _ in range(64 - len(s))])
    x = torch.tensor(seqs); pos = torch.tensor(pos); tgt = torch.tensor(tgt)
    h = train_forward(m, x)
    lg = m.hidden_to_logits(h[pos[:, 0], pos[:, 1]])
    loss = F.cross_entropy(lg, tgt)
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 100 == 0:
        print(step, round(loss.item(), 3), round((lg.argmax(-1) == tgt).float().mean().item(), 3), round(time.time() - t0), flush=True)
