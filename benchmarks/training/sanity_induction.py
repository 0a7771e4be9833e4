"""Does our block learn plain in-segment induction? Random tokens (vocab 64) repeated; 2 layers.

    python benchmarks/training/sanity_induction.py local    # prints step, loss, accuracy, seconds

The model card's "sanity: induction" row: 100% accuracy by step 100.
"""
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
V = 64; T = 24
mem = sys.argv[1] == 'mem'
cfg = ModelConfig(vocab_size=V, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=256, segment_len=64)
m = InfiniTransformer(cfg).init_weights(0)
opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
g = torch.Generator().manual_seed(0)
t0 = time.time()
for step in range(1, 1501):
    x = torch.randint(0, V, (32, T), generator=g)
    seq = torch.cat([x, x, torch.randint(0, V, (32, 64 - 2 * T), generator=g)], 1)
    h = train_forward(m, seq, use_memory=mem)
    lg = m.hidden_to_logits(h[:, T:2 * T - 1])
    loss = F.cross_entropy(lg.flatten(0, 1), seq[:, T + 1:2 * T].flatten())
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 100 == 0:
        acc = (lg.argmax(-1) == seq[:, T + 1:2 * T]).float().mean().item()
        print(step, round(loss.item(), 3), round(acc, 3), round(time.time() - t0), flush=True)
