"""The course's training before the move to Flax NNX: the network in ``flax.linen`` and a
``flax.training.TrainState``, fused with ``lax.scan`` exactly as fm_helpers did then.

Kept only to measure against (section 1, "fused (Linen)"): issue 10 asks that the NNX
training step runs within 5% of this one. ``params_from_nnx`` copies the weights of an
NNX :class:`fm_helpers.model.VelocityMLP`, so that both start from the same numbers, and
``check_same`` shows that the two compute the same loss and steps.
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax.training.train_state import TrainState

from fm_helpers.loss import sample_path


class GaussianFourierProjection(nn.Module):
    embedding_size: int = 64
    scale: float = 1.0

    @nn.compact
    def __call__(self, t):
        w = self.param("W", nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
        angles = 2.0 * jnp.pi * t[:, None] * jax.lax.stop_gradient(w)[None, :]
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class TimeDense(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x, t_emb):
        return nn.Dense(self.features)(x) + nn.Dense(self.features, use_bias=False)(t_emb)


class VelocityUNet(nn.Module):
    """fm_helpers.model.VelocityUNet as it was (Linen), with its defaults."""

    widths: Sequence[int] = (64, 128, 256)
    time_dim: int = 64
    embedding_size: int = 64
    activation: Callable = nn.silu

    @nn.compact
    def __call__(self, x, t):
        act = self.activation
        t_emb = GaussianFourierProjection(self.embedding_size)(jnp.broadcast_to(t, (x.shape[0],)))
        t_emb = nn.Dense(self.time_dim)(nn.silu(nn.Dense(self.time_dim)(t_emb)))
        h = act(nn.Dense(self.widths[0])(x))
        skips = [h]
        for width in self.widths[1:]:
            h = act(TimeDense(width)(h, t_emb))
            skips.append(h)
        skips.pop()
        for skip in reversed(skips):
            h = act(TimeDense(skip.shape[-1])(h, t_emb))
            h = jnp.concatenate([h, skip], axis=-1)
        return nn.Dense(x.shape[-1])(h)


def params_from_nnx(model: nnx.Module) -> dict:
    """Linen parameters with the values of an NNX VelocityMLP. Linen names layers in the
    order they are created: in ``Dense(Dense(t))`` the outer one is created first, so
    ``Dense_0`` is the second time layer and ``Dense_1`` the first."""
    def dense(layer):
        p = {"kernel": layer.kernel.value}
        return p if layer.bias is None else {**p, "bias": layer.bias.value}

    def time_dense(layer):
        return {"Dense_0": dense(layer.dense), "Dense_1": dense(layer.time)}

    return {
        "GaussianFourierProjection_0": {"W": model.fourier.W.value},
        "Dense_0": dense(model.time_out), "Dense_1": dense(model.time_in),
        "Dense_2": dense(model.layer_in), "Dense_3": dense(model.layer_out),
        **{f"TimeDense_{i}": time_dense(layer) for i, layer in
           enumerate([model.down_1, model.down_2, model.up_1, model.up_2])},
    }


def create_train_state(model: nnx.Module, learning_rate: float) -> TrainState:
    """The Linen network with ``model``'s weights, and constant-rate Adam."""
    return TrainState.create(apply_fn=VelocityUNet().apply, params=params_from_nnx(model),
                             tx=optax.adam(learning_rate))


def _loss(apply_fn, params, x1, key):
    path = sample_path(key, x1)
    v = apply_fn({"params": params}, path.x_t, path.t)
    return jnp.mean(jnp.sum((v - path.u_t) ** 2, axis=-1))


def make_train_step(batch_size: int):
    """``(state, key, data) -> (state, key, loss)``: the draws of fm_helpers' step."""
    def step(state, key, data):
        key, key_batch, key_loss = jax.random.split(key, 3)
        idx = jax.random.randint(key_batch, (batch_size,), 0, data.shape[0])
        loss, grads = jax.value_and_grad(lambda p: _loss(state.apply_fn, p, data[idx], key_loss))(state.params)
        return state.apply_gradients(grads=grads), key, loss

    return step


def make_train_chunk(batch_size: int, num_steps: int):
    """``num_steps`` Linen steps fused in one jitted ``lax.scan``, as fit ran them."""
    step = make_train_step(batch_size)

    @jax.jit
    def chunk(state, key, data):
        def body(carry, _):
            state, key, loss = step(*carry, data)
            return (state, key), loss

        (state, key), losses = jax.lax.scan(body, (state, key), None, length=num_steps)
        return state, key, losses

    return chunk


def check_same(model: nnx.Module, data: jax.Array, batch_size: int = 256, num_steps: int = 20) -> dict:
    """Train both versions ``num_steps`` steps from the same weights and keys (constant
    lr 1e-3): the largest difference of their losses and of their final kernels."""
    from fm_helpers.train import create_optimizer, make_train_chunk as nnx_chunk

    key = jax.random.PRNGKey(1)
    _, _, linen_losses = make_train_chunk(batch_size, num_steps)(create_train_state(model, 1e-3), key, data)
    graphdef, state = nnx.split((model, create_optimizer(model, 1e-3)))
    _, _, nnx_losses = nnx_chunk(batch_size, num_steps)(graphdef, state, key, data)
    return {"steps": num_steps, "max_abs_loss_diff": float(jnp.max(jnp.abs(linen_losses - nnx_losses))),
            "first_loss": float(nnx_losses[0])}
