"""A stand-in trainer for the runner's tests: honours the trainers' command-line and run-directory
contract (docs/RUN_FORMAT.md) in milliseconds, without torch.

Environment knobs (the tests set them):
  FAKE_STEP_S        seconds per step (default 0.002)
  FAKE_CRASH_SEEDS   seeds that raise an exception before any summary is written ("43 44")
  FAKE_HANG_SEEDS    seeds that never finish (for --timeout)
  FAKE_TERM_SUMMARY  when set, SIGTERM writes an 'interrupted' summary as the real trainers do
  FAKE_RECORD        a file: one JSON line per start (argv, CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS, ...)
  FAKE_MEET          a directory: each run leaves "<seed>-<pid>" there and waits (30 s at most) until
                     FAKE_MEET_N (default 2) runs have, failing otherwise; only runs that are alive at the
                     same time can meet
  FAKE_LOSS_SHIFT    "NAME=DELTA ..." adds DELTA to the val_loss of runs whose script (e.g.
                     train_gpt_palm.py) or --variant/--lmd is NAME ("train_gpt_palm.py=-0.5")
  FAKE_LOSS_NOISE    SD of a normal term added to the val_loss, drawn from the script name and seed
                     (the same run writes the same value every time)
"""
import argparse
import json
import os
import random
import signal
import sys
import time


def atomic(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def main():
    p = argparse.ArgumentParser()
    for flag in ("--preset", "--out_dir", "--resume", "--device", "--lmd", "--variant", "--input_bin",
                 "--input_val_bin"):
        p.add_argument(flag)
    for flag in ("--seed", "--num_iterations", "--warmdown_iters", "--batch_size", "--device_batch_size",
                 "--val_loss_every", "--save_every"):
        p.add_argument(flag, type=int)
    p.add_argument("--compile", nargs="?", const="on", choices=["auto", "on", "off"])
    a = p.parse_args()
    n = a.num_iterations or 20
    every = a.val_loss_every or 5
    seed = a.seed or 0
    out = a.out_dir
    os.makedirs(out, exist_ok=True)
    if os.environ.get("FAKE_RECORD"):
        with open(os.environ["FAKE_RECORD"], "a") as f:
            f.write(json.dumps({"argv": sys.argv, "cwd": os.getcwd(),
                                "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                                "RANK": os.environ.get("RANK"), "WORLD_SIZE": os.environ.get("WORLD_SIZE")}) + "\n")
    if os.environ.get("FAKE_MEET"):
        meet = os.environ["FAKE_MEET"]
        open(os.path.join(meet, f"{a.seed}-{os.getpid()}"), "w").close()
        deadline = time.time() + 30
        while len(os.listdir(meet)) < int(os.environ.get("FAKE_MEET_N", "2")):
            if time.time() > deadline:
                raise SystemExit(f"fake trainer: no other run started within 30 s (FAKE_MEET {meet})")
            time.sleep(0.02)
    start = 0
    ck = os.path.join(out, "checkpoints", "step.txt")
    if a.resume:
        with open(ck) as f:
            start = int(f.read())
        print(f"resuming from step {start}")
    t0 = time.time()

    def on_term(signum, frame):
        if os.environ.get("FAKE_TERM_SUMMARY"):
            atomic(os.path.join(out, "summary.json"), {"schema": 1, "status": "interrupted", "error": "SIGTERM",
                                                       "script": os.path.basename(sys.argv[0]), "seed": seed,
                                                       "metrics": {}})
        sys.exit(1)

    signal.signal(signal.SIGTERM, on_term)
    hang = str(seed) in os.environ.get("FAKE_HANG_SEEDS", "").split()
    crash = str(seed) in os.environ.get("FAKE_CRASH_SEEDS", "").split()
    step_s = float(os.environ.get("FAKE_STEP_S", "0.002"))
    script = os.path.basename(sys.argv[0])
    offset = 0.0
    for item in os.environ.get("FAKE_LOSS_SHIFT", "").split():
        name, _, delta = item.partition("=")
        if name in (script, a.variant, a.lmd):
            offset += float(delta)
    if os.environ.get("FAKE_LOSS_NOISE"):
        offset += float(os.environ["FAKE_LOSS_NOISE"]) * random.Random(f"{script}:{seed}").gauss(0.0, 1.0)
    loss = None
    with open(os.path.join(out, "metrics.jsonl"), "a") as m:
        for step in range(start, n + 1):
            if hang:
                time.sleep(3600)
            if crash and step == n // 2:
                raise RuntimeError(f"fake trainer crashed on purpose at step {step}")
            loss = 4.0 - 0.01 * step + 0.001 * seed + (0.0 if a.variant != "rmsnorm" else 0.05) + offset
            ms = (time.time() - t0) * 1000
            if step % every == 0 or step == n:
                print(f"step:{step}/{n} val_loss:{loss:.4f} train_time:{ms:.0f}ms step_avg:{ms / max(step, 1):.2f}ms")
                m.write(json.dumps({"step": step, "val_loss": loss, "train_time_ms": ms}) + "\n")
            if a.save_every and step and step % a.save_every == 0:
                os.makedirs(os.path.dirname(ck), exist_ok=True)
                with open(ck, "w") as f:
                    f.write(str(step))
            time.sleep(step_s)
    atomic(os.path.join(out, "summary.json"), {
        "schema": 1, "status": "ok", "error": None, "script": os.path.basename(sys.argv[0]),
        "variant": a.lmd or a.variant or "baseline", "seed": seed, "steps_completed": n,
        "metrics": {"val_loss": round(loss, 4), "wall_time_s": time.time() - t0},
        "config": vars(a), "env": {"device": a.device}})


if __name__ == "__main__":
    main()
