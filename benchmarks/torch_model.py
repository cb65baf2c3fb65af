"""The course's velocity network and Flow Matching loss, written again in eager PyTorch.

A copy of :class:`fm_helpers.model.VelocityMLP` with its defaults (widths 64-128-256, 64
Fourier frequencies, a 64-feature time embedding, SiLU, skip concatenations), built from
the Flax NNX model's weights so that both start from the same numbers; ``check_same`` measures
how far the two are apart on the same inputs. Only section 1 (and 6) import it.
"""

import math
import time

import numpy as np
import torch
from torch import nn


class TimeDense(nn.Module):
    """``y = W x + b + U e(t)``, as fm_helpers.model.TimeDense."""

    def __init__(self, fan_in: int, features: int, time_dim: int):
        super().__init__()
        self.dense = nn.Linear(fan_in, features)
        self.time = nn.Linear(time_dim, features, bias=False)

    def forward(self, x, t_emb):
        return self.dense(x) + self.time(t_emb)


class TorchVelocityMLP(nn.Module):
    def __init__(self, dim=2, widths=(64, 128, 256), time_dim=64, embedding_size=64):
        super().__init__()
        self.register_buffer("W", torch.zeros(embedding_size))  # fixed Fourier frequencies
        self.time_in = nn.Linear(2 * embedding_size, time_dim)
        self.time_out = nn.Linear(time_dim, time_dim)
        self.inp = nn.Linear(dim, widths[0])
        self.encoder = nn.ModuleList(TimeDense(a, b, time_dim) for a, b in zip(widths[:-1], widths[1:]))
        decoder, width = [], widths[-1]
        for skip in reversed(widths[:-1]):
            decoder.append(TimeDense(width, skip, time_dim))
            width = 2 * skip  # after concatenating the skip
        self.decoder = nn.ModuleList(decoder)
        self.out = nn.Linear(width, dim)

    def forward(self, x, t):
        angles = 2.0 * math.pi * t[:, None] * self.W[None, :]
        t_emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
        t_emb = self.time_out(nn.functional.silu(self.time_in(t_emb)))
        h = nn.functional.silu(self.inp(x))
        skips = [h]
        for layer in self.encoder:
            h = nn.functional.silu(layer(h, t_emb))
            skips.append(h)
        skips.pop()
        for layer, skip in zip(self.decoder, reversed(skips)):
            h = nn.functional.silu(layer(h, t_emb))
            h = torch.cat([h, skip], dim=-1)
        return self.out(h)


def _copy_dense(linear: nn.Linear, layer) -> None:
    linear.weight.data = torch.from_numpy(np.array(layer["kernel"]).T.copy())
    if linear.bias is not None:
        linear.bias.data = torch.from_numpy(np.array(layer["bias"]).copy())


def from_flax(state: dict) -> TorchVelocityMLP:
    """The PyTorch network with the weights of a default VelocityMLP, given as
    ``nnx.to_pure_dict(nnx.state(model))`` (or gradients in the same layout)."""
    model = TorchVelocityMLP(dim=np.shape(state["layer_in"]["kernel"])[0])
    if "fourier" in state:  # gradients have no entry for the fixed frequencies
        model.W.copy_(torch.from_numpy(np.array(state["fourier"]["W"])))
    _copy_dense(model.time_in, state["time_in"])
    _copy_dense(model.time_out, state["time_out"])
    _copy_dense(model.inp, state["layer_in"])
    _copy_dense(model.out, state["layer_out"])
    for layer, name in zip(list(model.encoder) + list(model.decoder), ("down_1", "down_2", "up_1", "up_2")):
        _copy_dense(layer.dense, state[name]["dense"])
        _copy_dense(layer.time, state[name]["time"])
    return model


def fm_loss(model, x0, x1, t):
    """The conditional Flow Matching loss with sigma_min = 0 (fm_helpers.loss.conditional_loss)."""
    x_t = (1.0 - t[:, None]) * x0 + t[:, None] * x1
    u_t = x1 - x0
    return ((model(x_t, t) - u_t) ** 2).sum(dim=-1).mean()


class TorchTrainer:
    """Adam (lr 1e-3) on the Flow Matching loss; one ``step`` draws a batch with
    replacement, fresh noise and times, like fm_helpers.train.make_train_step."""

    PHASES = ("batch", "forward + loss", "backward", "optimizer")

    def __init__(self, state: dict, data: np.ndarray, batch_size: int, learning_rate: float = 1e-3, seed: int = 0,
                 threads: int | None = None):
        torch.manual_seed(seed)
        self.threads = threads or torch.get_num_threads()
        self.model = from_flax(state)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=learning_rate)
        self.data = torch.from_numpy(np.array(data, dtype=np.float32))
        self.batch_size = batch_size

    def step(self) -> tuple[torch.Tensor, list[float]]:
        """One training step: its loss, and the clock read before and after each phase
        (PyTorch on a CPU runs synchronously, so the reads time the phases)."""
        clock = [time.perf_counter()]
        x1 = self.data[torch.randint(0, self.data.shape[0], (self.batch_size,))]
        x0, t = torch.randn_like(x1), torch.rand(self.batch_size)
        clock.append(time.perf_counter())
        loss = fm_loss(self.model, x0, x1, t)
        clock.append(time.perf_counter())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clock.append(time.perf_counter())
        self.optimizer.step()
        clock.append(time.perf_counter())
        return loss, clock

    def run(self, num_steps: int) -> float:
        torch.set_num_threads(self.threads)
        for _ in range(num_steps):
            loss, _ = self.step()
        return float(loss.detach())

    def profile(self, num_steps: int) -> dict:
        """Mean microseconds per step in each phase."""
        torch.set_num_threads(self.threads)
        totals = np.zeros(len(self.PHASES))
        for _ in range(num_steps):
            totals += np.diff(self.step()[1])
        return {k: v / num_steps * 1e6 for k, v in zip(self.PHASES, totals)}


def check_same(flax_model, n: int = 256, seed: int = 0) -> dict:
    """Largest differences between the Flax NNX and PyTorch networks on the same inputs:
    outputs, loss and every gradient entry (float32 round-off is about 1e-6)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from fm_helpers.loss import conditional_loss

    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal((n, 2)).astype(np.float32)
    x1 = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    t = rng.uniform(0, 1, n).astype(np.float32)
    model = from_flax(nnx.to_pure_dict(nnx.state(flax_model)))
    out_jax = np.asarray(flax_model(jnp.asarray(x1), jnp.asarray(t)))
    loss_jax, grads_jax = nnx.value_and_grad(
        lambda m: conditional_loss(m, jnp.asarray(x0), jnp.asarray(x1), jnp.asarray(t))
    )(flax_model)
    out_torch = model(torch.from_numpy(x1), torch.from_numpy(t)).detach().numpy()
    loss_torch = fm_loss(model, torch.from_numpy(x0), torch.from_numpy(x1), torch.from_numpy(t))
    loss_torch.backward()
    torch_grads = from_flax(nnx.to_pure_dict(grads_jax))  # same layout, JAX grads as weights
    diffs = [float(np.max(np.abs(p_t.grad.numpy() - g_j.detach().numpy())))
             for p_t, g_j in zip(model.parameters(), torch_grads.parameters())]
    n_params_jax = sum(int(np.size(v)) for v in jax.tree_util.tree_leaves(nnx.state(flax_model, nnx.Param)))
    return {"max_abs_output_diff": float(np.max(np.abs(out_jax - out_torch))),
            "abs_loss_diff": abs(float(loss_jax) - float(loss_torch.detach())), "max_abs_grad_diff": max(diffs),
            "trainable_params_torch": sum(p.numel() for p in model.parameters()),
            "trainable_params_jax": int(n_params_jax)}
