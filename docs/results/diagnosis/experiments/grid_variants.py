"""basic_rnn variants tried before the fix, run through probe.py with the model patched in place.

    PYTHONPATH=src python docs/results/diagnosis/experiments/grid_variants.py {pos,rows} \
        DATA basic_rnn --epochs 6

pos: a learned position embedding added to each cell's embedding (64 steps, as before the fix).
rows: one step per grid row, 8 cells x 4 statistics (what commit c92449d made the model do).
Run against the code before c92449d (cells as steps).
"""

import functools
import runpy
import sys

import torch
from torch import nn

from kanjirec.data.sequences import grid_cells
from kanjirec.models.grid_rnn import GridRNN

variant = sys.argv.pop(1)
original_init = GridRNN.__init__


@functools.wraps(original_init)
def patched_init(self, num_classes, **config):
    original_init(self, num_classes, **config)
    width = self.embed[0].out_features
    if variant == "pos":
        self.position = nn.Parameter(torch.randn(self.grid * self.grid, width) * 0.02)
    elif variant == "rows":
        self.embed = nn.Sequential(nn.Linear(4 * self.grid, width), nn.ReLU(), nn.LayerNorm(width))


def patched_forward(self, images):
    cells = self.cell_norm(grid_cells(images, self.grid).transpose(1, 2)).transpose(1, 2)
    if variant == "rows":
        x = self.embed(cells.reshape(cells.shape[0], self.grid, -1))
    else:
        x = self.embed(cells) + self.position
    out, _ = self.lstm(x)
    return self.head(out.mean(dim=1))


GridRNN.__init__ = patched_init
GridRNN.forward_features = patched_forward
sys.argv = ["probe.py", *sys.argv[1:]]
runpy.run_path("docs/results/diagnosis/probe.py", run_name="__main__")
