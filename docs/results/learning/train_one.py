"""Train one demo-width model as `kanjirec demo` does (batch 64, lr 2e-3, 6 epochs, its DEMO_CONFIGS),
on the demo's data, and print its per-epoch history (issue 15 item 2 experiments).

    cd docs/results/learning && PYTHONPATH=../../../src python train_one.py MODEL --data DEMO_DATA \
        [--name RUN] [--set key=value ...] [--mset model_key=value ...]

``--set augment='{"p": 0.0}'`` turned augmentation off, ``--set lr=6e-3`` raised the learning rate,
``cnn_headnorm`` (variants.py) is the cnn with mobile_cnn's batch-normalised head.
"""

import argparse
import json
import time

import variants  # noqa: F401  (registers the experiment variants; run from this folder or put it on PYTHONPATH)

from kanjirec.config import TrainConfig, parse_value
from kanjirec.demo import DEMO_CONFIGS, DEMO_TRAINING
from kanjirec.train import train

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--data", default="runs/demo/data")
p.add_argument("--epochs", type=int, default=6)
p.add_argument("--name", default="")
p.add_argument("--set", nargs="*", default=[])
p.add_argument("--mset", nargs="*", default=[])
a = p.parse_args()
kw = dict(
    model=a.model,
    data=a.data,
    out_dir="runs/learning",
    run_name=a.name or a.model,
    epochs=a.epochs,
    batch_size=64,
    lr=2e-3,
    seed=0,
    workers=0,
    save_every=0,
    patience=0,
    model_config=dict(DEMO_CONFIGS.get(a.model, {})),
)
kw.update(DEMO_TRAINING.get(a.model, {}))  # as the demo trains it
for s in a.set:
    k, v = s.split("=", 1)
    kw[k] = parse_value(v)
for s in a.mset:
    k, v = s.split("=", 1)
    kw["model_config"][k] = parse_value(v)
t = time.time()
final = train(TrainConfig(**kw), resume="none")
h = json.load(open(f"runs/learning/{a.name or a.model}/results/history.json"))
for r in h:
    print(
        f"ep {r['epoch']} trloss {r['train_loss']:.3f} tracc {r['train_acc']:.3f} val {r['val_acc']:.3f} {r['samples_per_s']:.0f}/s"
    )
print(f"RESULT {a.name or a.model} test {final['test_top1']:.4f} time {time.time() - t:.0f}s")
