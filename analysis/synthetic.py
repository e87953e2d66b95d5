"""Synthetic run directories in the exact layout of docs/RUN_FORMAT.md, for tests and benchmarks.

    from analysis.synthetic import write_condition
    write_condition("logs/stage_c/palm", "stage_c", "palm", seeds=[42, 43, 44], final=3.335, sd=0.001)

Curves have the speedrun's shape (validation every `val_every` steps and at the end, a training
line every `train_every` steps); the final validation line equals summary.json's val_loss.
"""
import json
import math
import os

import numpy as np


def loss_curve(steps, total, final, start=10.8):
    """A smooth decreasing loss from `start` at step 0 to exactly `final` at `total`."""
    s = np.asarray(steps, float)
    tau = total / 12
    return final + (start - final - 0.4) * (np.exp(-s / tau) - math.exp(-total / tau)) + 0.4 * (1 - s / total)


def write_run(run_dir, *, seed, final, variant="baseline", steps=5100, val_every=125, train_every=1,
              status="ok", stop_at=None, step_ms=300.0, metrics=None, config=None, env=None,
              script="train_gpt.py", truncate_last=False, write_summary=True, noise=0.002, error=None):
    """One run. stop_at < steps makes a run that ended early (status decides whether it says so)."""
    os.makedirs(run_dir, exist_ok=True)
    rng = np.random.default_rng(seed + 7919 * len(variant))
    last = steps if stop_at is None else stop_at
    lines = []
    t_steps = np.arange(1, last + 1, train_every)
    t_loss = loss_curve(t_steps, steps, final) + 0.3 + rng.normal(0, 0.03, len(t_steps))
    v_steps = np.unique(np.r_[np.arange(0, last + 1, val_every), [last] if last == steps else []]).astype(int)
    v_loss = loss_curve(v_steps, steps, final) + rng.normal(0, noise, len(v_steps))
    if last == steps:
        v_loss[-1] = final
    if status == "diverged":
        v_loss[-1] = float("nan")
    vi = 0
    for s, l in zip(t_steps, t_loss):
        while vi < len(v_steps) and v_steps[vi] <= s:
            vs = v_steps[vi]
            vl = "NaN" if not math.isfinite(v_loss[vi]) else f"{v_loss[vi]:.4f}"
            lines.append(f'{{"step": {vs}, "val_loss": {vl}, "train_time_ms": {vs * step_ms:.1f}}}')
            vi += 1
        lines.append(f'{{"step": {s}, "train_loss": {l:.4f}, "train_time_ms": {s * step_ms:.1f}, "lr_scale": 1.0}}')
    for vs, vl in zip(v_steps[vi:], v_loss[vi:]):
        vl = "NaN" if not math.isfinite(vl) else f"{vl:.4f}"
        lines.append(f'{{"step": {vs}, "val_loss": {vl}, "train_time_ms": {vs * step_ms:.1f}}}')
    text = "\n".join(lines) + "\n"
    if truncate_last:
        text = text[: -len(lines[-1]) // 2 - 1]
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.write(text)
    with open(os.path.join(run_dir, "stdout.log"), "w") as f:
        f.write(f"step:{last}/{steps} val_loss:{final:.4f} train_time:{last * step_ms:.0f}ms step_avg:{step_ms:.2f}ms\n")
        if error:
            f.write(error + "\n")
    if not write_summary:
        return
    m = {"val_loss": final, "train_loss": float(t_loss[-1]), "train_time_s": last * step_ms / 1000,
         "wall_time_s": last * step_ms / 1000 * 1.03, "peak_memory_mib": 30602, "tokens_per_s": 524288 / (step_ms / 1000),
         "num_params": 124_000_000}
    if status != "ok":
        m = {"train_time_s": last * step_ms / 1000}
    m.update(metrics or {})
    cfg = dict(num_iterations=steps, learning_rate=0.0036, warmdown_iters=1450, batch_size=512, seed=seed)
    cfg.update(config or {})
    summary = dict(schema=1, status=status, error=error if status != "ok" else None, script=script, variant=variant,
                   seed=seed, steps_completed=last, metrics=m, config=cfg,
                   env=dict(torch="2.13.0", device="cuda", gpus=8, gpu_name="NVIDIA H100 80GB HBM3",
                            git_commit="0123456789abcdef0123456789abcdef01234567", git_dirty=False, hostname="node1",
                            **(env or {})))
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)


def write_condition(cond_dir, stage, variant, *, seeds, final, sd=0.0, rng_seed=0, overrides=None,
                    per_run=None, experiment=True, **kw):
    """A condition: experiment.json plus one run per seed with final val loss ~ N(final, sd).
    per_run: {seed: dict of write_run overrides} (e.g. status='oom')."""
    os.makedirs(cond_dir, exist_ok=True)
    rng = np.random.default_rng(rng_seed)
    finals = final + sd * rng.standard_normal(len(seeds))
    if experiment:
        with open(os.path.join(cond_dir, "experiment.json"), "w") as f:
            json.dump(dict(stage=stage, variant=variant, script=kw.get("script", "train_gpt.py"), seeds=list(seeds),
                           nproc_per_node=8, nnodes=1, overrides=overrides or {},
                           command=f"torchrun --standalone --nproc_per_node=8 train_gpt.py --variant {variant}",
                           CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7", start_time="2026-11-25T12:00:00Z",
                           git_commit="0123456789abcdef0123456789abcdef01234567", git_dirty=False), f, indent=1)
    for s, fv in zip(seeds, finals):
        args = dict(kw)
        args["config"] = dict(kw.get("config") or {}, **(overrides or {}))
        args.update((per_run or {}).get(s, {}))
        write_run(os.path.join(cond_dir, f"seed_{s}"), seed=s, final=round(float(fv), 4), variant=variant, **args)
    return finals


def speedrun_log(path, *, final, steps=5100, val_every=125, step_ms=300.0, stop_at=None, code=None, peak_mib=30602,
                 seed=0):
    """A plain speedrun log file (optionally with the script's code printed above the log lines)."""
    rng = np.random.default_rng(seed)
    last = steps if stop_at is None else stop_at
    out = []
    if code is not None:
        out.append(code)
        out.append("=" * 100)
        out.append("Wed Nov 25 12:00:00 2026\n+-----------------------------------------------------------------------------+")
        out.append("=" * 100)
    v_steps = sorted(set(range(0, last + 1, val_every)) | ({last} if last == steps else set()))
    v_loss = loss_curve(v_steps, steps, final) + rng.normal(0, 0.002, len(v_steps))
    if last == steps:
        v_loss[-1] = final
    vi = 0
    for s in range(0, last + 1):
        if vi < len(v_steps) and v_steps[vi] == s:
            avg = "nan" if s <= 10 else f"{step_ms:.2f}"
            out.append(f"step:{s}/{steps} val_loss:{v_loss[vi]:.4f} train_time:{max(0, s - 10) * step_ms:.0f}ms step_avg:{avg}ms")
            vi += 1
        if s >= 1:
            out.append(f"step:{s}/{steps} train_loss:{float(loss_curve([s], steps, final)[0]) + 0.3:.4f} "
                       f"train_time:{max(0, s - 10) * step_ms:.0f}ms step_avg:{step_ms:.2f}ms")
    if last == steps and peak_mib is not None:
        out.append(f"peak memory consumption: {peak_mib} MiB")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
