"""Probes of the first-letter absorption metric: our JAX/numpy versions of SAEBench's.

- `train_letter_probes`: a one-vs-rest logistic-regression probe per letter, trained with Adam on
  BCE with positive-class weights (SAEBench probing.train_multi_probe); on the model's activations it
  is the ground-truth first-letter probe, on SAE latents with an L1 penalty it ranks latents for
  k-sparse probing (SAEBench k_sparse_probing.train_sparse_multi_probe).
- `fit_balanced_logistic`: scikit-learn's LogisticRegression(class_weight="balanced") objective
  (L2, C = 1, unpenalised intercept) solved by Newton's method; SAEBench fits it with lbfgs,
  max_iter=500, to the k latents chosen by the L1 probe.
- `k_sparse_probes` and `main_latents`: SAEBench's feature-split rule picks each letter's main
  latents: the k-sparse probe's F1 must rise by more than `F1_JUMP` for each latent added.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

# SAEBench common.train_and_save_probes / probing.train_linear_probe_for_task (ground-truth probe):
# batch 64, 50 epochs, Adam lr 1e-2 decayed exponentially (per epoch) to 1e-5, L2 weight decay 1e-4.
PROBE_BATCH, PROBE_EPOCHS, PROBE_LR, PROBE_END_LR, PROBE_WEIGHT_DECAY = 64, 50, 1e-2, 1e-5, 1e-4
# SAEBench eval_config (k_sparse_probe_l1_decay, _batch_size, _num_epochs) and
# k_sparse_probing.train_sparse_multi_probe (lr 0.01, end_lr 1e-5, l2_decay 1e-6).
SPARSE_L1, SPARSE_BATCH, SPARSE_EPOCHS, SPARSE_LR, SPARSE_END_LR, SPARSE_WEIGHT_DECAY = (
    0.01, 4096, 50, 0.01, 1e-5, 1e-6)
# SAEBench eval_config: max_k_value = 10, f1_jump_threshold = 0.03.
MAX_K, F1_JUMP = 10, 0.03
# torch.optim.Adam defaults, which SAEBench uses.
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8


@dataclasses.dataclass(frozen=True)
class LinearProbes:
    weights: np.ndarray  # float32 [n_classes, d]
    bias: np.ndarray  # float32 [n_classes]

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Logits [n, n_classes]; a probe says "yes" where its logit is > 0 (SAEBench)."""
        return np.asarray(x, np.float32) @ self.weights.T + self.bias


def _loss(params, x, y, pos_weight, l1):
    """torch BCEWithLogitsLoss(pos_weight) (mean over rows and probes) + l1 · mean_probe Σ|w|."""
    w, b = params
    z = x @ w.T + b
    bce = -(pos_weight * y * jax.nn.log_sigmoid(z) + (1.0 - y) * jax.nn.log_sigmoid(-z))
    return jnp.mean(bce) + l1 * jnp.mean(jnp.sum(jnp.abs(w), axis=-1))


def _adam_step(params, m, v, t, x, y, pos_weight, lr, weight_decay, l1):
    """One torch-style Adam step: L2 weight decay is added to the gradient (not decoupled)."""
    grads = jax.grad(_loss)(params, x, y, pos_weight, l1)
    grads = jax.tree.map(lambda g, p: g + weight_decay * p, grads, params)
    m = jax.tree.map(lambda a, g: ADAM_B1 * a + (1 - ADAM_B1) * g, m, grads)
    v = jax.tree.map(lambda a, g: ADAM_B2 * a + (1 - ADAM_B2) * g * g, v, grads)
    c1, c2 = 1 - ADAM_B1 ** t, 1 - ADAM_B2 ** t
    params = jax.tree.map(lambda p, a, b: p - lr * (a / c1) / (jnp.sqrt(b / c2) + ADAM_EPS), params, m, v)
    return params, m, v


def _epoch_rows(rng: np.random.Generator, n: int, steps: int, batch: int) -> np.ndarray:
    """int32 [steps, batch] row indices: shuffled passes over the n rows, one after the other."""
    need = steps * batch
    passes = [rng.permutation(n) for _ in range(-(-need // n))]
    return np.concatenate(passes)[:need].reshape(steps, batch).astype(np.int32)


@jax.jit
def _adam_epoch(params, m, v, t0, x, y, rows, pos_weight, lr, weight_decay, l1):
    """`rows.shape[0]` Adam steps at one learning rate (lax.scan: one dispatch per epoch)."""
    def body(carry, batch_rows):
        params, m, v, t = carry
        params, m, v = _adam_step(params, m, v, t, x[batch_rows], y[batch_rows], pos_weight, lr,
                                  weight_decay, l1)
        return (params, m, v, t + 1.0), None

    (params, m, v, _), _ = jax.lax.scan(body, (params, m, v, t0), rows)
    return params, m, v


def train_letter_probes(x: np.ndarray, labels: np.ndarray, n_classes: int, *, batch_size: int, epochs: int,
                        lr: float, end_lr: float, weight_decay: float, l1: float = 0.0,
                        steps_per_epoch: int | None = None, seed: int = 0) -> LinearProbes:
    """One-vs-rest logistic probes of `labels` (int [n]) on x [n, d], as SAEBench trains them.

    Positive weight per class = negatives / positives (SAEBench probing._calc_pos_weights; a class
    without positives gets weight 0 for its absent positives). The learning rate decays by
    (end_lr / lr)^(1/epochs) after each epoch (SAEBench _get_exponential_decay_scheduler).
    An epoch is `steps_per_epoch` Adam steps on batches of min(batch_size, n) rows drawn from
    shuffled passes over the data; None: one pass, ceil(n / batch_size) steps, as SAEBench's
    DataLoader(shuffle=True) (whose last batch is short; ours are all full). A larger
    steps_per_epoch keeps SAEBench's number of steps when it is trained on fewer words.
    """
    x = np.asarray(x, np.float32)
    n, d = x.shape
    if n == 0:
        raise ValueError("no rows to train the probes on")
    batch = min(batch_size, n)
    steps = steps_per_epoch if steps_per_epoch is not None else -(-n // batch)
    y = np.eye(n_classes, dtype=np.float32)[np.asarray(labels)]
    pos = y.sum(0)
    pos_weight = np.where(pos > 0, (n - pos) / np.maximum(pos, 1), 0.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(d)  # torch nn.Linear's default initialisation
    params = (jnp.asarray(rng.uniform(-bound, bound, (n_classes, d)), jnp.float32),
              jnp.asarray(rng.uniform(-bound, bound, (n_classes,)), jnp.float32))
    m = jax.tree.map(jnp.zeros_like, params)
    v = jax.tree.map(jnp.zeros_like, params)
    gamma = (end_lr / lr) ** (1.0 / epochs)
    f32 = jnp.float32
    xj, yj, pw = jnp.asarray(x), jnp.asarray(y), jnp.asarray(pos_weight)
    for epoch in range(epochs):
        rows = jnp.asarray(_epoch_rows(rng, n, steps, batch))
        params, m, v = _adam_epoch(params, m, v, f32(1 + epoch * steps), xj, yj, rows, pw,
                                   f32(lr * gamma ** epoch), f32(weight_decay), f32(l1))
    w, b = jax.device_get(params)
    return LinearProbes(np.asarray(w, np.float32), np.asarray(b, np.float32))


def fit_balanced_logistic(x: np.ndarray, y: np.ndarray, c: float = 1.0, max_iter: int = 100,
                          tol: float = 1e-10) -> tuple[np.ndarray, float]:
    """(w [k], b) minimising ½‖w‖² + C Σ_i s_i · logloss_i with s_i = n / (2 · n_class(y_i)).

    scikit-learn LogisticRegression's objective with class_weight="balanced" (the intercept is not
    penalised), solved by damped Newton steps in float64; it is strictly convex in w, so the optimum
    is the one lbfgs approaches.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, bool)
    n, k = x.shape
    n_pos = int(y.sum())
    if n_pos in (0, n):
        raise ValueError(f"logistic regression needs both classes; got {n_pos} positives of {n} rows")
    s = np.where(y, n / (2.0 * n_pos), n / (2.0 * (n - n_pos)))
    xb = np.hstack([x, np.ones((n, 1))])
    reg = np.ones(k + 1)
    reg[-1] = 0.0
    yf = y.astype(np.float64)

    def objective(theta):
        z = xb @ theta
        return 0.5 * np.sum(reg * theta ** 2) + c * np.sum(s * (np.logaddexp(0.0, z) - yf * z))

    theta = np.zeros(k + 1)
    value = objective(theta)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(xb @ theta)))
        grad = reg * theta + c * xb.T @ (s * (p - yf))
        hess = np.diag(reg) + c * (xb.T * (s * p * (1 - p))) @ xb + 1e-12 * np.eye(k + 1)
        step = np.linalg.solve(hess, grad)
        size = 1.0
        while size > 1e-8:  # backtracking: Newton can overshoot where the data separate
            candidate = theta - size * step
            new_value = objective(candidate)
            if new_value <= value:
                break
            size *= 0.5
        else:
            break
        theta, done = candidate, value - new_value < tol * max(1.0, abs(value))
        value = new_value
        if done:
            break
    return theta[:k].astype(np.float32), float(theta[k])


def f1_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Binary F1 of the positive class; 0 when there is nothing to find and nothing found."""
    tp = int(np.sum(y_true & y_pred))
    denom = 2 * tp + int(np.sum(~y_true & y_pred)) + int(np.sum(y_true & ~y_pred))
    return 2 * tp / denom if denom else 0.0


@dataclasses.dataclass(frozen=True)
class KSparseResult:
    latents: list[list[np.ndarray]]  # [letter][k-1]: the k latents of the k-sparse probe, int [k]
    f1: np.ndarray  # float [n_letters, MAX_K]: test F1 of each k-sparse probe (nan: not fitted)


def k_sparse_probes(train_latents: np.ndarray, train_labels: np.ndarray, test_latents: np.ndarray,
                    test_labels: np.ndarray, n_letters: int, l1_ranking: LinearProbes,
                    max_k: int = MAX_K) -> KSparseResult:
    """For each letter and k = 1..max_k: the k latents with the largest (signed) L1-probe weight,
    a balanced logistic regression on them, and its test F1 (logit > 0), as SAEBench
    k_sparse_probing.train_k_sparse_probes / build_metrics_df do."""
    latents, f1 = [], np.full((n_letters, max_k), np.nan)
    for letter in range(n_letters):
        order = np.argsort(-l1_ranking.weights[letter], kind="stable")
        y_train, y_test = train_labels == letter, test_labels == letter
        per_k = []
        for k in range(1, max_k + 1):
            ids = order[:k]
            per_k.append(ids)
            if 0 < y_train.sum() < len(y_train):
                w, b = fit_balanced_logistic(train_latents[:, ids], y_train)
                f1[letter, k - 1] = f1_score(y_test, test_latents[:, ids] @ w + b > 0)
        latents.append(per_k)
    return KSparseResult(latents, f1)


def main_latents(result: KSparseResult, letter: int, f1_jump: float = F1_JUMP) -> list[int]:
    """SAEBench add_feature_splits_to_metrics_df: grow k while F1 beats the best so far by more
    than f1_jump; the main latents are those of the last k that did."""
    best, chosen = -100.0, []
    for k in range(1, result.f1.shape[1] + 1):
        score = result.f1[letter, k - 1]
        if not np.isfinite(score) or score <= best + f1_jump:
            break
        best, chosen = score, [int(i) for i in result.latents[letter][k - 1]]
    return chosen
