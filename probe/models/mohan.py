"""The bias-free blind denoisers of Mohan, Kadkhodaie, Simoncelli & Fernandez-Granda (ICLR 2020,
"Robust and interpretable blind image denoising via bias-free convolutional neural networks"),
written from the paper's description and the released checkpoints' tensor names and shapes.

Both map a noisy grayscale image y in [0, 1] (noise std 0..100 on the 0..255 scale) to the clean
estimate f(y), with no noise-level input and no additive constant anywhere: in eval mode
f(a y) = a f(y) for a > 0 (ReLU and a division by a fixed standard deviation are positively
homogeneous, convolutions are linear), so f(y) = J(y) y exactly (Euler's theorem) and the
Jacobian J(y) is the adaptive linear filter the paper analyses.

- `BFDnCNN`: a 3x3 convolution + ReLU, `layers - 2` blocks of 3x3 convolution, bias-free batch
  norm and ReLU, and a last 3x3 convolution that predicts the noise; f(y) = y - net(y).
  Receptive field: 2 * layers + 1 pixels across (41 x 41 at 20 layers).
- `BFSmallUNet`: conv1 5x5 and conv2 3x3 at full resolution, conv3 3x3 stride 2, conv4 3x3,
  conv5 3x3 dilation 2, conv6 3x3 dilation 4 at half resolution, conv7 4x4 stride-2 transposed
  convolution back up, concatenation with conv2's output, conv8 3x3 and conv9 5x5 to one channel;
  ReLU after every layer but the last; it outputs the clean image (no residual). Padding keeps
  every size ("same"), so inputs need even sides.

`BiasFreeBatchNorm2d` in eval mode is x / (sqrt(running_var) + eps) * weight, eps = 1e-5 added
after the root (the checkpoint's `bias` and `running_mean` are stored but never used). The
checkpoints' state-dict keys (`first_layer`, `hidden_layer_list.{i}`, `bn_layer_list.{i}`,
`last_layer`; `conv1` ... `conv9`) are this module's parameter names, so they load strictly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BiasFreeBatchNorm2d(nn.Module):
    """Divide by a per-channel standard deviation, multiply by a gain: no mean, no shift.

    Training divides by the batch standard deviation (+ eps after the root) and tracks
    `running_var` with momentum 0.1, as torch's BatchNorm2d does; eval uses `running_var`.
    `bias`, `running_mean` and `num_batches_tracked` exist only so a released state dict loads
    strictly."""

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels), requires_grad=False)  # unused
        self.register_buffer("running_mean", torch.zeros(channels))  # unused
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            var = x.var(dim=(0, 2, 3), unbiased=False)
            with torch.no_grad():
                self.running_var.lerp_(var.detach(), self.momentum)
                self.num_batches_tracked += 1
        else:
            var = self.running_var
        sd = var.sqrt() + self.eps
        return x / sd.reshape(1, -1, 1, 1) * self.weight.reshape(1, -1, 1, 1)


class BFDnCNN(nn.Module):
    """Bias-free DnCNN: y -> y - net(y) (see the module doc)."""

    def __init__(self, channels: int = 1, width: int = 64, layers: int = 20):
        super().__init__()
        if layers < 3:
            raise ValueError(f"DnCNN needs at least 3 layers, got {layers}")
        self.channels, self.layers = channels, layers
        self.first_layer = nn.Conv2d(channels, width, 3, padding=1, bias=False)
        self.hidden_layer_list = nn.ModuleList(
            nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in range(layers - 2))
        self.bn_layer_list = nn.ModuleList(BiasFreeBatchNorm2d(width) for _ in range(layers - 2))
        self.last_layer = nn.Conv2d(width, channels, 3, padding=1, bias=False)

    @property
    def receptive_field(self) -> int:
        """Side of the square of input pixels one output pixel sees: 3x3 per layer."""
        return 2 * self.layers + 1

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.first_layer(y))
        for conv, bn in zip(self.hidden_layer_list, self.bn_layer_list):
            out = F.relu(bn(conv(out)))
        return y - self.last_layer(out)


class BFSmallUNet(nn.Module):
    """The paper's small bias-free UNet: y -> clean image (see the module doc)."""

    def __init__(self, channels: int = 1, width: int = 32):
        super().__init__()
        w, w2 = width, 2 * width
        self.channels = channels
        self.conv1 = nn.Conv2d(channels, w, 5, padding=2, bias=False)
        self.conv2 = nn.Conv2d(w, w, 3, padding=1, bias=False)
        self.conv3 = nn.Conv2d(w, w2, 3, stride=2, padding=1, bias=False)
        self.conv4 = nn.Conv2d(w2, w2, 3, padding=1, bias=False)
        self.conv5 = nn.Conv2d(w2, w2, 3, padding=2, dilation=2, bias=False)
        self.conv6 = nn.Conv2d(w2, w2, 3, padding=4, dilation=4, bias=False)
        self.conv7 = nn.ConvTranspose2d(w2, w2, 4, stride=2, padding=1, bias=False)
        self.conv8 = nn.Conv2d(w2 + w, w, 3, padding=1, bias=False)
        self.conv9 = nn.Conv2d(w, channels, 5, padding=2, bias=False)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if y.shape[-1] % 2 or y.shape[-2] % 2:
            raise ValueError(f"the small BF-UNet needs even image sides, got {tuple(y.shape[-2:])}")
        skip = F.relu(self.conv2(F.relu(self.conv1(y))))
        out = F.relu(self.conv4(F.relu(self.conv3(skip))))
        out = F.relu(self.conv6(F.relu(self.conv5(out))))
        out = F.relu(self.conv7(out))
        out = F.relu(self.conv8(torch.cat([out, skip], dim=1)))
        return self.conv9(out)
