"""Activation and logit scales of each demo-width model at initialisation, on 130 demo images:
the classifier's input is small and unnormalised in the models that stalled.

    PYTHONPATH=src python docs/results/learning/init_scales.py DEMO_DATA
"""

import sys

import numpy as np
import torch

from kanjirec.data.store import PackedDataset
from kanjirec.demo import DEMO_CONFIGS
from kanjirec.models import create_model

torch.manual_seed(0)
torch.set_num_threads(1)
ds = PackedDataset.open(sys.argv[1])
x = torch.from_numpy(np.array(ds.images[np.arange(0, 4000, 31)]))[:, None]
for name in ["cnn", "mobile_cnn", "hybrid_cnn_rnn", "basic_rnn", "radical_attn_rnn", "radical_rnn"]:
    m = create_model(name, 100, classes=list(ds.classes), **DEMO_CONFIGS.get(name, {})).train()
    acts = {}
    hooks = [
        mod.register_forward_hook(lambda mod, i, o, n=n: acts.__setitem__(n, o))
        for n, mod in m.named_modules()
        if n.count(".") <= 1 and n
    ]
    out = m(x)
    for h in hooks:
        h.remove()
    print(
        name,
        "logits std %.3f" % out.std().item(),
        " ".join(f"{n}:{o.std().item():.3f}" for n, o in acts.items() if isinstance(o, torch.Tensor)),
    )
