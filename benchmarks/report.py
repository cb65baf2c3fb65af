"""Markdown tables and goal verdicts from a results JSON (no JAX, no PyTorch: the
consistency test imports this module to check that the book's tables match the JSON)."""

from __future__ import annotations

import json
from pathlib import Path

# The figures' folder as seen from benchmarks/results/latest.md (the book page includes that
# file with :relative-images:, so the same path works in the book and on GitHub).
PAGE_IMAGE_DIR = "../../book/_static/bench"
SECTIONS = ("training", "budget", "nfe", "density", "book")
FIGURES = {"training": "training.png", "budget": "budget.png", "nfe": "nfe.png",
           "density": "density.png", "book": "book.png"}


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _g(x: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, without exponent for ordinary sizes."""
    if x == 0 or 1e-3 <= abs(x) < 1e6:
        return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"
    return f"{x:.{digits - 1}e}"


def _s(x: float) -> str:  # seconds
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


# ----------------------------------------------------------------------------- goals

def goals(results: dict) -> list[dict]:
    """The issue's goals, each with the measured figure and whether it is met
    (``met`` is None when the run did not measure it)."""
    out = []
    tr = results.get("training")
    if tr and "256" in tr["batches"]:
        r256 = tr["batches"]["256"]["ratios"]["fused / best torch"]
        other = [f"batch {b}: {_g(v['ratios']['fused / best torch'])}x" for b, v in tr["batches"].items() if b != "256"]
        out.append({"goal": "fused training >= 4x eager PyTorch (batch 256, faster PyTorch thread setting)",
                    "measured": f"{_g(r256)}x" + (f" ({', '.join(other)})" if other else ""),
                    "met": r256 >= 4.0})
    bu = results.get("budget")
    if bu:
        ok = [r for r in bu["runs"] if r["kl_gap"] <= 0.10 and r["train_seconds"] <= 300]
        best = min(bu["runs"], key=lambda r: r["kl_gap"])
        measured = (f"{ok[0]['steps']} steps: KL gap {ok[0]['kl_gap']:.3f} nats in {_s(ok[0]['train_seconds'])} s"
                    if ok else f"best: {best['steps']} steps, KL gap {best['kl_gap']:.3f} nats in "
                    f"{_s(best['train_seconds'])} s")
        out.append({"goal": "KL gap <= 0.10 nats within 5 minutes of training", "measured": measured,
                    "met": bool(ok)})
    nf = results.get("nfe")
    if nf:
        out.append(_nfe_goal(nf))
    de = results.get("density")
    if de:
        rec = next(r for r in de["two_d"] if r["method"] == "exact" and r["solver"] == "adaptive")
        fixed = [r for r in de["two_d"] if r["method"] == "exact" and r["solver"] != "adaptive"]
        extra = "".join(f"; {r['solver']}: {_s(r['seconds'])} s, NFE {r['nfe']}, RMS "
                        f"{_g(r['rms_diff_vs_exact_adaptive'])} nats from adaptive" for r in fixed)
        out.append({"goal": f"exact log-prob of {de['n_points_2d']:,} 2D points <= 10 s (adaptive Tsit5)",
                    "measured": f"{_s(rec['seconds'])} s after compilation (+{_s(rec['compile_seconds'])} s "
                                f"compilation), NFE {rec['nfe']}" + extra,
                    "met": rec["seconds"] <= 10.0 and de["n_points_2d"] >= 10_000})
    bk = results.get("book")
    if bk:
        failed = [c["chapter"] for c in bk["chapters"] if not c["ok"]]
        total = sum(c["seconds"] for c in bk["chapters"] if c["in_toc"])
        measured = f"{_s(total)} s for {sum(c['in_toc'] for c in bk['chapters'])} chapters"
        if bk["missing"]:
            measured += f"; missing: {', '.join(bk['missing'])}"
        if failed:
            measured += f"; failed: {', '.join(failed)}"
        met = None if bk["missing"] else (total <= 360 and not failed)
        out.append({"goal": "core chapters run cold in <= 6 min in total", "measured": measured, "met": met})
    return out


def _verdict(met) -> str:
    return "not measured (incomplete)" if met is None else ("met" if met else "not met")


# ----------------------------------------------------------------------------- sections

def _meta(m: dict) -> str:
    pk = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    rows = [
        ["date (UTC)", m["date"]],
        ["CPU", f"{m['cpu_model']}, {m['cores']} cores"],
        ["load average (1 min) at start / end", f"{m['load_start']:.2f} / {m['load_end']:.2f}"],
        ["packages", pk],
        ["mode", ("quick (development sizes)" if m["quick"] else "full") + f"; benchmarks: {', '.join(m['only'])}"],
        ["wall time of the whole run", f"{_s(m['total_seconds'])} s"],
    ]
    return _table(["", ""], rows)


def _training(t: dict, img: str) -> str:
    rows = []
    for b, rec in t["batches"].items():
        sps, ra = rec["steps_per_second"], rec["ratios"]
        rows.append([b, _g(sps["fused"]), _g(sps["jit loop"]), _g(sps["torch eager"]),
                     _g(sps["torch eager 1 thread"]), f"{ra['fused / best torch']:.2f}",
                     f"{ra['fused / jit loop']:.2f}", f"{ra['jit loop / best torch']:.2f}"])
    parts = [
        f"Steps per second, median of {t['rounds']} interleaved rounds of about "
        f"{t['seconds_per_measure']} s each; PyTorch {t['torch_version']} with "
        f"`torch.set_num_threads({t['torch_threads']})` (the core count) and with 1 thread. "
        f"*Best torch* is the faster of the two.",
        "",
        _table(["batch", "fused `lax.scan`", "jit loop", f"torch eager, {t['torch_threads']} threads",
                "torch eager, 1 thread", "fused / best torch", "fused / jit loop", "jit loop / best torch"], rows),
        "",
    ]
    sn = t["same_network"]
    parts += [
        f"Same network: {sn['trainable_params_jax']} trainable parameters in both; from the same weights and "
        f"inputs the outputs differ by at most {_g(sn['max_abs_output_diff'])}, the losses by "
        f"{_g(sn['abs_loss_diff'])} and the gradients by {_g(sn['max_abs_grad_diff'])} (float32 round-off).",
        "",
        "**Profile.** Two batch sizes give each method a cost model *time per step = fixed + per-sample x batch*:",
        "",
    ]
    cm = t["profile"].get("cost_model", {})
    if cm:
        keys = [k for k in next(iter(cm.values())) if k.startswith("fixed_share_at_")]
        parts.append(_table(["method", "fixed (us/step)", "per sample (us)"] +
                            [f"fixed share at batch {k.rsplit('_', 1)[1]}" for k in keys],
                            [[m, f"{v['fixed_us']:.0f}", f"{v['per_sample_us']:.2f}"] +
                             [f"{100 * v[k]:.0f}%" for k in keys] for m, v in cm.items()]))
        parts.append("")
    pr = t["profile"]
    lines = []
    for b, rec in t["batches"].items():
        lines.append(
            f"- batch {b}: XLA counts {rec['xla_flops_per_step'] / 1e6:.1f} MFLOP per step; the fused scan runs "
            f"{_g(rec['fused_gflops_per_second'])} GFLOP/s, {100 * rec['fused_share_of_matmul_peak']:.0f}% of what a "
            f"1024x1024 matrix product reaches here ({_g(pr['matmul_1024_gflops_per_second'])} GFLOP/s). Time per step, "
            f"jit loop minus scan: {rec['loop_overhead_us_per_step']:.0f} us (an empty jitted call costs "
            f"{pr['empty_jit_call_us']:.1f} us). PyTorch per step, " +
            "; ".join(f"{name}: " + ", ".join(f"{k} {v:.0f} us" for k, v in ph.items())
                      for name, ph in rec["torch_phases_us"].items()) + ".")
    parts += lines + ["", f"![Training throughput]({img}/{FIGURES['training']})"]
    return "\n".join(parts)


def _budget(b: dict, img: str) -> str:
    rows = [[f"{r['steps']:,}", _s(r["train_seconds"]), f"{r['fit_steps_per_second']:.0f}",
             f"{r['kl_gap']:.3f} ± {r['nll_stderr']:.3f}", _g(r["energy_distance"]), f"{r['final_train_loss']:.3f}"]
            for r in b["runs"]]
    return "\n".join([
        f"Batch {b['batch_size']}, learning rate {b['learning_rate']}, {b['schedule']}; each budget trained "
        f"from scratch on {b['n_train']:,} points. KL gap = test NLL on {b['n_nll']:,} points (exact, adaptive "
        f"Tsit5) minus the true entropy {b['entropy']:.4f} nats (± one standard error of the NLL). Energy "
        f"distance of {b['n_samples']:,} samples to {b['n_samples']:,} test points; a fresh exact sample of the "
        f"same size scores {_g(b['exact_sample_energy_distance'])}.",
        "",
        _table(["steps", "training wall time (s)", "steps/s", "KL gap (nats)", "energy distance",
                "final train loss"], rows),
        "",
        f"![Quality against training budget]({img}/{FIGURES['budget']})",
    ])


NFE_GOAL = ("a fixed-step solver within tolerance of adaptive at <= 16 NFE "
            "(chapter 6's rule, fm_helpers.metrics.cheapest_within_tolerance)")


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _ci(ci, fmt=_g) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def _nfe_goal(nf: dict) -> dict:
    if "rule" not in nf:  # a run from before chapter 6's paired rule
        return {"goal": NFE_GOAL, "met": None,
                "measured": "not measured: this run predates the rule (run `make bench` again)"}
    ref, rule = nf["adaptive"], nf["rule"]
    if nf["cheapest"] is None:
        return {"goal": NFE_GOAL, "met": False,
                "measured": f"no fixed-step setting in the sweep is within tolerance (adaptive NFE {ref['nfe']})"}
    best = nf["fixed"][nf["cheapest"]]
    measured = (f"{best['solver']} x{best['num_steps']} (NFE {best['nfe']}, adaptive {ref['nfe']}): mean distance "
                f"{_g(best['mean_distance'])} to the adaptive samples (limit {_g(rule['distance_tolerance'])}), "
                f"{_pct(best['off_support'])} off the support against {_pct(ref['off_support'])} "
                f"(limit +{_pct(rule['excess_tolerance'])})")
    return {"goal": NFE_GOAL, "measured": measured, "met": best["nfe"] <= 16}


def _nfe(n: dict, img: str) -> str:
    a, floor = n["adaptive"], n["floor"]
    floor_text = (f"Energy distance to the test set, for comparison: fresh exact samples of the same size score "
                  f"{_g(floor['mean'])} ± {_g(floor['sd'])} (mean ± sd of {len(floor['draws'])} draws), the floor "
                  f"no model can beat and the resolution of that metric.")
    if "rule" not in n:
        rows = [[f"{a['solver']} adaptive (rtol {a['rtol']:g})", "-", a["nfe"], _g(a["energy_distance"]), "0"]]
        rows += [[r["solver"], r["num_steps"], r["nfe"], _g(r["energy_distance"]), _g(r["mean_error_vs_adaptive"])]
                 for r in n["fixed"]]
        return "\n".join([
            f"Model trained for {n['model_steps']:,} steps; {n['n_samples']:,} samples from the same noise for "
            f"every solver. This run predates the rule that chapter 6 now uses to pick the cheapest setting "
            f"(`fm_helpers.metrics.cheapest_within_tolerance`), so no setting is picked here; run `make bench` "
            f"again. "
            f"*Error vs adaptive*: mean distance of each sample to the adaptive solution from the same noise. "
            + floor_text,
            "",
            _table(["solver", "steps", "NFE", "energy distance", "error vs adaptive"], rows),
        ])
    rule = n["rule"]
    level = f"{100 * rule['level']:g}%"
    rows = [[f"{a['solver']} adaptive (rtol {a['rtol']:g})", "-", a["nfe"], _g(a["energy_distance"]), "0",
             _pct(a["off_support"]), "0", "-"]]
    for r in n["fixed"]:
        rows.append([r["solver"], r["num_steps"], r["nfe"], _g(r["energy_distance"]),
                     f"{_g(r['mean_distance'])} {_ci(r['mean_distance_ci'])}", _pct(r["off_support"]),
                     f"{_pct(r['excess_off_support'])} {_ci(r['excess_off_support_ci'], _pct)}",
                     "yes" if r["within_tolerance"] else "no"])
    return "\n".join([
        f"Model trained for {n['model_steps']:,} steps; {n['n_samples']:,} samples from the same noise for every "
        f"solver. Each fixed-step row is compared with the adaptive solution from the same noise point. "
        f"*Distance to adaptive*: mean distance between paired samples; *off support*: share of samples where "
        f"the true density is zero; *extra off support*: that share minus the adaptive one; brackets: {level} "
        f"bootstrap intervals "
        f"over {rule['num_resamples']} resamples of the points. *Within tolerance* is the rule of chapter 6 "
        f"(`{rule['function']}`): the upper ends of both intervals within a distance of "
        f"{_g(rule['distance_tolerance'])} ({rule['pixel_fraction']:g} of a pixel) and an extra share of "
        f"{_pct(rule['excess_tolerance'])} ({rule['leak_fraction']:g} of the adaptive solution's share off the "
        f"support); the cheapest setting within tolerance is the one with the fewest NFE. " + floor_text,
        "",
        _table(["solver", "steps", "NFE", "energy distance", "distance to adaptive", "off support",
                "extra off support", "within tolerance"], rows),
        "",
        f"![Paired comparison with the adaptive solver against NFE]({img}/{FIGURES['nfe']})",
    ])


def _density(d: dict, img: str) -> str:
    rows = [[r["method"], r["solver"], r["nfe"], _s(r["seconds"]), _s(r["compile_seconds"]),
             f"{r['seconds_per_evaluation_ms']:.1f}", f"{r['standalone_evaluation_ms']:.1f}",
             f"{r['gflop_per_evaluation']:.2f}", f"{r['gflops_per_second']:.0f}", f"{r['mean_log_prob']:.4f}",
             _g(r["rms_diff_vs_exact"]) if "rms_diff_vs_exact" in r else "-",
             _g(r["rms_diff_vs_exact_adaptive"]) if "rms_diff_vs_exact_adaptive" in r else "-"]
            for r in d["two_d"]]
    sc = d["scaling"]
    srows = [[r["d"], f"{r['exact_seconds']:.3f}", f"{r['hutchinson_seconds']:.3f}",
              f"{r['speedup_hutchinson']:.2f}", _g(r["hutchinson_rms_error"])] for r in sc["rows"]]
    return "\n".join([
        f"Log-likelihood of {d['n_points_2d']:,} 2D points under the model trained for {d['model_steps']:,} steps "
        f"(times after compilation; Hutchinson with one Rademacher probe). *ms per evaluation*: the solve's time "
        f"over its NFE; *alone*: one evaluation of the same augmented field compiled by itself, without the "
        f"solver; GFLOP counted by XLA. The last two columns give the RMS difference per point, in nats, to the "
        f"exact method with the same solver and to exact with the adaptive solver.",
        "",
        _table(["method", "solver", "NFE", "seconds", "compile (s)", "ms per evaluation", "ms alone",
                "GFLOP per evaluation", "GFLOP/s", "mean log p", "vs exact, same solver",
                "vs exact adaptive"], rows),
        "",
        f"Scaling with the dimension: a random VelocityUNet with d inputs, {sc['n_points']:,} points, "
        f"{sc['solver']} with {sc['num_steps']} fixed steps for both methods (same NFE at every d).",
        "",
        _table(["d", "exact (s)", "Hutchinson (s)", "exact / Hutchinson", "Hutchinson RMS error (nats)"], srows),
        "",
        f"![Density cost]({img}/{FIGURES['density']})",
    ])


def _book(b: dict, img: str) -> str:
    rows = [[c["chapter"], _s(c["seconds"]), c["code_cells"], "ok" if c["ok"] else f"failed: {c['error']}"]
            for c in b["chapters"]]
    parts = ["Each chapter run cold with nbclient in a fresh kernel (kernel start, imports and compilation "
             "included), one after another.", ""]
    if rows:
        parts += [_table(["chapter", "seconds", "code cells", "status"], rows), "",
                  f"Total: {_s(b['total_seconds'])} s.", ""]
    if b["missing"]:
        parts += [f"Missing when this ran: {', '.join(b['missing'])}.", ""]
    if rows:
        parts.append(f"![Chapter execution times]({img}/{FIGURES['book']})")
    return "\n".join(parts).rstrip()


TITLES = {
    "training": "Training throughput",
    "budget": "Quality against training budget",
    "nfe": "Sample quality against NFE",
    "density": "Cost of the log-likelihood: exact against Hutchinson",
    "book": "Whole-book execution",
}
RENDER = {"training": _training, "budget": _budget, "nfe": _nfe, "density": _density, "book": _book}


def render(results: dict, image_dir: str) -> str:
    """The markdown of a results JSON; ``image_dir`` is the figures' folder as the page sees it."""
    parts = ["<!-- Generated by benchmarks/run.py from benchmarks/results/latest.json: do not edit. -->", "",
             "## The run", "", _meta(results["meta"]), "", "## Goals", ""]
    parts.append(_table(["goal", "measured", "verdict"],
                        [[g["goal"], g["measured"], _verdict(g["met"])] for g in results["goals"]]))
    for i, key in enumerate(SECTIONS, 1):
        if key in results:
            parts += ["", f"## {i}. {TITLES[key]}", "", RENDER[key](results[key], image_dir)]
    return "\n".join(parts) + "\n"


def load(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
