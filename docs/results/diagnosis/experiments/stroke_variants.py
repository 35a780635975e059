"""stroke_rnn variants, run through probe.py with the model patched in place (not adopted).

    PYTHONPATH=src python docs/results/diagnosis/experiments/stroke_variants.py {ln,ln_mean} \
        DATA stroke_rnn --epochs 6

ln: LayerNorm after the stroke embedding. ln_mean: that, and a mean over the real steps in place of
the max over steps.
"""

import functools
import runpy
import sys

import torch
from torch import nn

from kanjirec.models.stroke_rnn import StrokeRNN

variant = sys.argv.pop(1)
original_init = StrokeRNN.__init__


@functools.wraps(original_init)
def patched_init(self, num_classes, **config):
    original_init(self, num_classes, **config)
    self.embed = nn.Sequential(self.embed[0], nn.ReLU(), nn.LayerNorm(self.embed[0].out_features))


def mean_pool_forward(self, strokes, lengths):
    lengths = lengths.clamp(min=1)
    padding = torch.arange(strokes.shape[1], device=strokes.device)[None, :] >= lengths[:, None]
    x = self.lstm(self.embed(strokes), lengths)
    attended, _ = self.attention(x, x, x, key_padding_mask=padding, need_weights=False)
    valid = (~padding)[:, :, None].float()
    return self.head((attended * valid).sum(1) / valid.sum(1))


StrokeRNN.__init__ = patched_init
if variant == "ln_mean":
    StrokeRNN.forward_features = mean_pool_forward
sys.argv = ["probe.py", *sys.argv[1:]]
runpy.run_path("docs/results/diagnosis/probe.py", run_name="__main__")
