"""Analytic denoisers: closed-form D(x_noisy, sigma) -> x0_hat built from a training set.

- `ideal` (probe.baselines.ideal): the exact posterior mean of the empirical training
  distribution; its samples can only be training images.
- `wiener` (probe.baselines.wiener): the optimal linear (Gaussian) denoiser from the training
  mean and covariance, full or stationary (Fourier-diagonal).
- `ls` / `els` (probe.baselines.local): Kamb & Ganguli's local and equivariant local score
  machines: each pixel is the posterior mean of its P x P neighbourhood's centre under the
  training patches at the same location (ls) or at every location (els).

`probe.baselines.run` turns them into Runs (a run directory without weights: config, subset and
the statistics it needs), which every probe and sampler takes like a trained model.
"""

KINDS = ("ideal", "wiener", "ls", "els")
