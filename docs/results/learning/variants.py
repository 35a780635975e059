"""Experiment variants registered under new names (not part of the toolkit): the cnn with mobile_cnn's
head (Linear -> BatchNorm1d -> ReLU -> Dropout 0.2 -> Linear), tried before the fix went into models/cnn.py."""

from torch import nn

from kanjirec.demo import DEMO_CONFIGS
from kanjirec.models import register_model
from kanjirec.models.cnn import PlainCNN


@register_model("cnn_headnorm")
class CNNHeadNorm(PlainCNN):
    def __init__(self, num_classes, *, channels=(32, 64, 128, 256), head_hidden=512):
        super().__init__(num_classes, channels=channels, head_hidden=head_hidden)
        # normalise the pooled features and the hidden layer, as mobile_cnn's head does
        c = self.head[2].in_features
        h = self.head[2].out_features
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c, h),
            nn.BatchNorm1d(h),
            nn.ReLU(inplace=True),
            nn.Dropout(0.2),
            nn.Linear(h, num_classes),
        )


DEMO_CONFIGS["cnn_headnorm"] = DEMO_CONFIGS["cnn"]
