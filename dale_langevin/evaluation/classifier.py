"""A small CNN classifier whose penultimate features stand in for Inception's (offline FID/KID).

Trained once on the dataset's train split, checkpointed with Orbax under ``WORKDIR/classifier``
(:mod:`dale_langevin.pipeline.checkpoint`) and reused. Images are in [0, 1], ``(N, H, W, C)``; features are ``(N, feature_dim)``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from dale_langevin.pipeline import checkpoint


class Classifier(nn.Module):
    """Two conv blocks (32, 64 channels, GELU, 2x2 average pooling), a ``feature_dim`` layer, a linear head."""

    num_classes: int = 10
    feature_dim: int = 128

    @nn.compact
    def __call__(self, x: jax.Array, *, return_features: bool = False):
        """``x`` ``(B, H, W, C)`` in [0, 1] -> logits ``(B, num_classes)`` (and features ``(B, feature_dim)``)."""
        h = x - 0.5
        for channels in (32, 64):
            h = nn.gelu(nn.Conv(channels, (3, 3))(h))
            h = nn.gelu(nn.Conv(channels, (3, 3))(h))
            h = nn.avg_pool(h, (2, 2), strides=(2, 2))
        features = nn.gelu(nn.Dense(self.feature_dim)(h.reshape(h.shape[0], -1)))
        logits = nn.Dense(self.num_classes)(features)
        return (logits, features) if return_features else logits


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int = 10,
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    log=print,
):
    """Trains :class:`Classifier` with Adam on uint8 or [0, 1] images ``(N, H, W, C)``; returns ``(model, params)``."""
    x = _as_unit(images)
    y = np.asarray(labels, np.int32)
    model = Classifier(num_classes)
    params = model.init(jax.random.key(seed), jnp.zeros((1, *x.shape[1:])))
    steps = epochs * (len(x) // batch_size)
    tx = optax.adam(optax.cosine_decay_schedule(lr, max(steps, 1)))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, xb, yb):
        def loss_fn(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, xb), yb).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        losses = []
        for s in _batches(len(order) - len(order) % batch_size, batch_size):
            params, opt_state, loss = step(params, opt_state, x[order[s]], y[order[s]])
            losses.append(loss)
        log(f"classifier epoch {epoch + 1}/{epochs}: loss {float(np.mean(jax.device_get(losses))):.4f}")
    return model, params


def _as_unit(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)


def predict(model: Classifier, params, images: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Predicted labels ``(N,)`` and penultimate features ``(N, feature_dim)`` of images ``(N, H, W, C)``."""
    x = _as_unit(images)
    apply = jax.jit(lambda p, xb: model.apply(p, xb, return_features=True))
    labels, feats = [], []
    for s in _batches(len(x), batch_size):
        logits, f = apply(params, x[s])
        labels.append(np.asarray(jnp.argmax(logits, -1)))
        feats.append(np.asarray(f))
    return np.concatenate(labels), np.concatenate(feats).astype(np.float64)


def load_or_train(
    directory: epath.Path,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int = 10,
    epochs: int = 3,
    seed: int = 0,
    log=print,
):
    """The classifier checkpointed in ``directory`` (``Workdir.classifier``), trained on ``images``/``labels`` if absent.

    Returns ``(model, params, trained_now)``.
    """
    model = Classifier(num_classes)
    mngr = checkpoint.manager(directory, keep=1)
    like = jax.eval_shape(lambda: model.init(jax.random.key(seed), jnp.zeros((1, *np.shape(images)[1:]))))
    params = checkpoint.restore_latest(mngr, like)
    if params is not None:
        return model, params, False
    model, params = train_classifier(images, labels, num_classes=num_classes, epochs=epochs, seed=seed, log=log)
    checkpoint.save(mngr, epochs, params)
    return model, params, True
