"""9. Images: the digits U-Net checkpoint's likelihood and class fidelity (chapter 11).

The shipped checkpoint (``fm_helpers/assets/digits_unet_seed0``), scored with chapter 11's
split and keys: the test digits dequantised with key 7, Hutchinson's probes from key 14.

- Bits per dimension of the unconditional flow (the null class) on every test digit:
  Hutchinson with Tsit5 and 8 fixed steps, the chapter's figure, which checks it; the
  same with adaptive Tsit5 (rtol = atol = 1e-5); the exact trace (64 Jacobian-vector
  products) on the first ``n_exact`` test digits; the conditional flow (label known).
- The baselines on the same test copy: a full-covariance Gaussian and a Gaussian mixture
  (components chosen on validation), fitted to the training digits dequantised with
  key 12.
- Chapter 3's fully connected network with a class input, widths (96, 80, 160), trained
  with the checkpoint's recipe in ``lax.scan`` chunks; its bits per dimension likewise.
- Class fidelity: a logistic regression trained on the real training digits reads
  ``n_per_class`` samples per class at each w (midpoint rule, 8 steps).
- The U-Net's training speed, one compiled step at a time against a ``lax.scan``.
"""

import json
import time
from importlib.resources import files
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import markup as md
from common import Context
from fm_helpers import density, guidance, images, sample, train, unet
from plots import plt, save
from sections import Goal

NAME = "images"
TITLE = "Images"
OPT_IN = False
SETTINGS = {False: {"n_exact": 32, "mlp_steps": 10_000, "n_per_class": 50, "scan_steps": 20},
            True: {"n_exact": 4, "mlp_steps": 500, "n_per_class": 10, "scan_steps": 4}}
WS = (0.0, 1.0, 1.5, 2.0, 3.0, 4.0)
MLP_WIDTHS = (96, 80, 160)


def _beats(s: dict, threshold: float) -> tuple[str, bool]:
    best = min(s["bpd_gaussian"], s["bpd_mixture"])
    return (f"flow {s['bpd_hutchinson']:.3f}, Gaussian {s['bpd_gaussian']:.3f}, mixture "
            f"{s['bpd_mixture']:.3f} bits per dimension", s["bpd_hutchinson"] < best - threshold)


def _fidelity(s: dict, threshold: float) -> tuple[str, bool]:
    best = max(s["accuracy"], key=lambda a: a["accuracy"])
    return f"{best['accuracy']:.3f} at w = {best['w']:g}", best["accuracy"] >= threshold


GOALS: tuple[Goal, ...] = (
    Goal("the flow's bits per dimension below both baselines' (margin {threshold:g})", 0.0,
         _beats),
    Goal("classifier accuracy on guided samples at the best w at least {threshold:g}", 0.90,
         _fidelity),
)


def _bits(log_q) -> np.ndarray:
    return images.bits_per_dim(np.asarray(log_q), 64)


def _mean_se(b) -> tuple[float, float]:
    b = np.asarray(b)
    return float(b.mean()), float(b.std(ddof=1) / np.sqrt(len(b)))


def _steps_per_second(model, v, y, loss, steps: int, chunk_size: int) -> float:
    _, history = train.fit(v, labels=y, model=model, loss=loss, steps=steps, batch_size=128,
                           learning_rate=2e-3, seed=0, chunk_size=chunk_size, progress=False)
    return history.steps_per_second


def run(ctx: Context) -> dict:
    cfg = SETTINGS[ctx.cfg.quick]
    assets = files("fm_helpers") / "assets"
    record = json.loads((assets / "digits_unet_seed0.json").read_text())
    recipe = record["recipe"]
    v, y = images.load_digits()
    tr, va, te = images.stratified_split(y, tuple(recipe["split"]), seed=recipe["split_seed"])
    v_train = v[tr].astype(np.float32)
    x_test = jnp.asarray(images.dequantize(jax.random.PRNGKey(7), v[te]))
    x_train = images.dequantize(jax.random.PRNGKey(12), v[tr])
    x_val = images.dequantize(jax.random.PRNGKey(8), v[va])
    model = train.load_state(assets / "digits_unet_seed0.msgpack", unet.ConditionalUNet(
        8, num_classes=10, channels=recipe["channels"], embed_dim=recipe["embed_dim"],
        rngs=nnx.Rngs(0)))
    null = guidance.ConditionalVelocity(model, model.null)
    probe = jax.random.PRNGKey(14)
    out = {"n_test": len(te), "n_exact": cfg["n_exact"], "mlp_steps": cfg["mlp_steps"],
           "n_per_class": cfg["n_per_class"], "ws": list(WS)}

    fixed = density.log_prob(null, x_test, method="hutchinson", key=probe, solver="tsit5",
                             num_steps=8)
    hutch = _bits(fixed.log_prob)
    out["bpd_hutchinson"], out["bpd_hutchinson_se"] = _mean_se(hutch)
    adaptive = density.log_prob(null, x_test, method="hutchinson", key=probe)
    out["bpd_adaptive"], out["bpd_adaptive_se"] = _mean_se(_bits(adaptive.log_prob))
    out["nfe_fixed"], out["nfe_adaptive"] = fixed.nfe, adaptive.nfe
    n = cfg["n_exact"]
    exact = density.log_prob(null, x_test[:n], solver="tsit5", num_steps=8)
    exact_bits = _bits(exact.log_prob)
    out["bpd_exact"] = float(exact_bits.mean())
    out["bpd_exact_hutchinson"] = float(hutch[:n].mean())  # fixed steps: per image alone
    # The probe's noise alone, image by image: Hutchinson minus exact, and its spread.
    out["hutchinson_minus_exact_se"] = float(np.std(hutch[:n] - exact_bits, ddof=1) / np.sqrt(n))
    out["hutchinson_noise_sd"] = float(np.std(hutch[:n] - exact_bits, ddof=1))
    conditional = density.log_prob(guidance.ConditionalVelocity(model, jnp.asarray(y[te])),
                                   x_test, method="hutchinson", key=probe, solver="tsit5",
                                   num_steps=8)
    cond = _bits(conditional.log_prob)
    out["bpd_conditional"], out["bpd_conditional_se"] = _mean_se(cond)
    # What the label saves, paired over the same digits (and the same probes).
    out["label_saving"], out["label_saving_se"] = _mean_se(hutch - cond)
    ctx.log(f"  flow {out['bpd_hutchinson']:.3f} (adaptive {out['bpd_adaptive']:.3f}, exact on "
            f"{n}: {out['bpd_exact']:.3f} vs {out['bpd_exact_hutchinson']:.3f})")

    gaussian = images.GaussianBaseline(x_train)
    mixture, scores = images.fit_mixture_baseline(x_train, x_val, components=(1, 2, 4, 8, 16))
    out["bpd_gaussian"] = float(_bits(gaussian.log_prob(np.asarray(x_test))).mean())
    out["bpd_mixture"] = float(_bits(mixture.score_samples(np.asarray(x_test))).mean())
    out["mixture_components"] = int(mixture.n_components)

    loss = images.Dequantized(guidance.LabelDropoutLoss(recipe["drop_prob"]))
    tick = time.perf_counter()
    mlp, _ = train.fit(v_train, labels=y[tr], loss=loss, steps=cfg["mlp_steps"],
                       batch_size=recipe["batch_size"], learning_rate=recipe["learning_rate"],
                       seed=recipe["seed"], progress=False,
                       model=guidance.ConditionalVelocityMLP(64, num_classes=10,
                                                             widths=MLP_WIDTHS,
                                                             rngs=nnx.Rngs(recipe["seed"])))
    out["mlp_seconds"] = time.perf_counter() - tick
    mlp_q = density.log_prob(guidance.ConditionalVelocity(mlp, mlp.null), x_test,
                             method="hutchinson", key=probe, solver="tsit5", num_steps=8)
    out["bpd_mlp"], out["bpd_mlp_se"] = _mean_se(_bits(mlp_q.log_prob))
    ctx.log(f"  baselines: Gaussian {out['bpd_gaussian']:.3f}, mixture {out['bpd_mixture']:.3f}; "
            f"fully connected {out['bpd_mlp']:.3f}")

    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=3000).fit(v[tr] / 16, y[tr])
    out["ceiling"] = float(clf.score(v[te] / 16, y[te]))
    k = cfg["n_per_class"]
    labels = np.tile(np.repeat(np.arange(10), k), len(WS))
    ws = np.repeat(np.asarray(WS, np.float32), 10 * k)
    noise = jax.random.normal(jax.random.PRNGKey(11), (len(labels), 64))
    drawn = sample.sample(guidance.GuidedVelocity(model, jnp.asarray(labels), jnp.asarray(ws)),
                          noise, solver="midpoint", num_steps=8).samples
    predicted = clf.predict(images.quantize(drawn) / 16)
    out["accuracy"] = [{"w": w, "accuracy": float(np.mean(predicted[ws == w] == labels[ws == w]))}
                       for w in WS]

    unet_model = unet.ConditionalUNet(8, rngs=nnx.Rngs(0))
    out["steps_per_second_chunk1"] = _steps_per_second(unet_model, v_train, y[tr], loss, 200, 1)
    out["steps_per_second_scan"] = _steps_per_second(unet_model, v_train, y[tr], loss,
                                                     cfg["scan_steps"], cfg["scan_steps"] // 2)
    ctx.log(f"  U-Net steps/s: {out['steps_per_second_chunk1']:.1f} one at a time, "
            f"{out['steps_per_second_scan']:.2f} in lax.scan")
    return out


def render(s: dict, image_dir: str) -> str:
    rows = [
        ["flow, Hutchinson, Tsit5 8 steps (chapter 11)", f"{s['bpd_hutchinson']:.3f} ± {s['bpd_hutchinson_se']:.3f}",
         f"all {s['n_test']}"],
        ["flow, Hutchinson, adaptive Tsit5", f"{s['bpd_adaptive']:.3f} ± {s['bpd_adaptive_se']:.3f}",
         f"all {s['n_test']}"],
        ["flow, exact trace, Tsit5 8 steps", f"{s['bpd_exact']:.3f}", f"first {s['n_exact']}"],
        ["flow, Hutchinson, the same digits", f"{s['bpd_exact_hutchinson']:.3f} (minus exact: "
         f"{s['bpd_exact_hutchinson'] - s['bpd_exact']:+.3f} ± {s['hutchinson_minus_exact_se']:.3f})",
         f"first {s['n_exact']}"],
        ["conditional flow (label known)", f"{s['bpd_conditional']:.3f} ± {s['bpd_conditional_se']:.3f} "
         f"(unconditional minus conditional, paired: {s['label_saving']:.3f} ± {s['label_saving_se']:.3f})",
         f"all {s['n_test']}"],
        [f"fully connected network, {s['mlp_steps']:,} steps", f"{s['bpd_mlp']:.3f} ± {s['bpd_mlp_se']:.3f}",
         f"all {s['n_test']}"],
        [f"Gaussian mixture ({s['mixture_components']} components)", f"{s['bpd_mixture']:.3f}", f"all {s['n_test']}"],
        ["Gaussian, full covariance", f"{s['bpd_gaussian']:.3f}", f"all {s['n_test']}"],
    ]
    acc = ", ".join(f"{a['accuracy']:.3f} (w = {a['w']:g})" for a in s["accuracy"])
    return "\n".join([
        "Chapter 11's checkpoint (10,000 steps), scored on the digits' test split with the chapter's keys. "
        "Bits per dimension are the dequantisation bound; ± is the standard error over test digits, which "
        f"includes the Hutchinson probe's noise. The solves took {s['nfe_fixed']} evaluations with 8 fixed "
        f"steps and {s['nfe_adaptive']} adaptive. One probe's error on one digit has a standard deviation of "
        f"{s['hutchinson_noise_sd']:.3f} bits per dimension (Hutchinson minus exact, first {s['n_exact']} digits).",
        "",
        md.table(["model", "bits per dimension", "test digits"], rows),
        "",
        f"Classifier (logistic regression on the real training digits; {s['ceiling']:.3f} on the real test "
        f"digits) on {s['n_per_class']} guided samples per class and w: {acc}.",
        "",
        f"U-Net training at batch 128 on this machine: {s['steps_per_second_chunk1']:.1f} steps/s one compiled "
        f"step at a time, {s['steps_per_second_scan']:.2f} steps/s inside `lax.scan`.",
        "",
        md.figure("Classifier accuracy on guided samples against w", image_dir, NAME),
    ])


def plot(s: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([a["w"] for a in s["accuracy"]], [a["accuracy"] for a in s["accuracy"]], "o-",
            label="guided samples")
    ax.axhline(s["ceiling"], color="k", ls="--", lw=1, label="real test digits")
    ax.set(xlabel="guidance weight w", ylabel="classifier accuracy", ylim=(0, 1.05))
    ax.legend(fontsize=8)
    save(fig, path)
