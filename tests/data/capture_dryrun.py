"""Capture a runner's --dry-run (and --help) output for every built-in stage and a set of option
combinations, with and without a stand-in 8-GPU nvidia-smi, paths normalised to {REPO} and {CWD}.

    python3 tests/data/capture_dryrun.py ./run_experiments.sh OUT.json

tests/data/runner_dryrun_bash.json was captured from the bash runner (864 lines) before the Python
port; tests/test_runner_plan.py replays its cases against the current runner."""
import json, os, subprocess, sys, tempfile
REPO = os.path.dirname(os.path.abspath(sys.argv[1]))
CASES = []
STAGES = ["stage_a", "stage_b", "stage_c", "lmd", "embnorm", "tiny", "smoke", "demo"]
for st in STAGES:
    for gpus in (0, 8):
        CASES.append((st, [], gpus))
        CASES.append((st, ["--preset", "tiny"], gpus))
        CASES.append((st, ["--iterations", "100"], gpus))
        CASES.append((st, ["--gpus", "2"], gpus))
        CASES.append((st, ["--seeds", "7,8", "--variants", "baseline,palm,rmsnorm,moderate,baseline_2proc"], gpus))
    CASES.append((st, ["--no-compile", "--save-every", "50", "--", "--batch_size", "64", "--warmdown_iters", "9"], 8))
    CASES.append((st, ["--compile", "--preset", "tiny", "--iterations", "30", "--launcher", "torchrun"], 0))
    CASES.append((st, ["--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint", "node0:29500"], 8))
    CASES.append((st, ["--nnodes", "2", "--rdzv-endpoint", "node0:29500", "--rdzv-backend", "static"], 8))
    CASES.append((st, ["--jobs", "2", "--preset", "tiny"], 0))
    CASES.append((st, ["--device", "cpu", "--preset", "tiny", "--iterations", "12"], 8))
    CASES.append((st, ["--device", "cuda", "--gpus", "4"], 0))
    CASES.append((st, ["--launcher", "python", "--gpus", "1"], 8))
CASES.append(("stage_a", ["--logs", "rel/logs"], 8))
CASES.append(("tiny", [], 0, "nologs"))
CASES.append(("stage_c", ["--gpus", "4"], 8, "cvd:2,3,5,7"))
CASES.append(("stage_a", [], 8, "cvd:"))
CASES.append(("demo", ["--iterations", "8"], 0))
CASES.append(("demo", [], 0, "demo_iters"))
CASES.append(("stage_c", ["--jobs", "2"], 8))
CASES.append(("stage_a", ["--device", "cpu"], 8))
CASES.append(("stage_a", ["--gpus", "0"], 8))
CASES.append(("embnorm", ["--variants", "nope"], 0))
CASES.append(("embnorm", ["--timeout", "abc"], 0))
CASES.append(("embnorm", ["--jobs", "2", "--nnodes", "2", "--rdzv-endpoint", "h:1"], 0))
CASES.append(("embnorm", ["--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1"], 0))
CASES.append(("embnorm", ["--rdzv-endpoint", "nohost"], 0))
CASES.append(("embnorm", ["--launcher", "mpi"], 0))
CASES.append(("--help", [], 0, "nologs"))
CASES.append(("--help", [], 0, "demo_iters"))
for sw in (["sweep", "train_gpt.py", "--param", "learning_rate", "--values", "0.01", "0.02,0.04", "--seeds", "1,2", "--preset", "tiny", "--iterations", "6"],
           ["sweep", "train_gpt.py", "--param", "learning_rate", "--values", "0.01", "0.02"],
           ["sweep", "train_mini_embnorm.py", "--param", "lr", "--values", "1e-3", "3e-3", "--iterations", "50"],
           ["sweep", "train_gpt_palm.py", "--param", "warmdown_iters", "--values", "10", "20", "--gpus", "2"]):
    for gpus in (0, 8):
        CASES.append((sw[0], sw[1:], gpus))

def run_case(runner, stage, args, gpus, extra=None):
    with tempfile.TemporaryDirectory() as td:
        cwd = os.path.join(td, "cwd"); os.makedirs(cwd)
        bindir = os.path.join(td, "bin"); os.makedirs(bindir)
        os.symlink("/usr/bin/python3", os.path.join(bindir, "python"))
        if gpus:
            smi = os.path.join(bindir, "nvidia-smi")
            with open(smi, "w") as f:
                f.write("#!/bin/sh\n" + "".join(f"echo 'GPU {i}: Fake GPU (UUID: GPU-{i})'\n" for i in range(gpus)))
            os.chmod(smi, 0o755)
        env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "NNODES", "NODE_RANK", "RDZV_ENDPOINT", "RDZV_BACKEND", "OMP_NUM_THREADS", "DEMO_TINY_ITERS", "DEMO_EMBNORM_ITERS")}
        env["PATH"] = bindir + ":/usr/local/bin:/usr/bin:/bin"
        env["PYTHON"] = "python"
        env["OMP_NUM_THREADS"] = "1"
        if extra and extra.startswith("cvd:"):
            env["CUDA_VISIBLE_DEVICES"] = extra[4:]
        if extra == "demo_iters":
            env["DEMO_TINY_ITERS"] = "5"; env["DEMO_EMBNORM_ITERS"] = "7"
        argv = [stage, *args]
        if "--logs" not in args and extra != "nologs":
            argv += ["--logs", "/nonexistent/LOGS"]
        dd = argv.index("--") if "--" in argv else len(argv)
        if stage != "--help":
            argv = argv[:dd] + ["--dry-run"] + argv[dd:]
        p = subprocess.run(["bash", runner, *argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
        norm = lambda s: s.replace(REPO, "{REPO}").replace(cwd, "{CWD}")
        return {"argv": argv, "gpus": gpus, "env": {k: env[k] for k in ("CUDA_VISIBLE_DEVICES", "DEMO_TINY_ITERS", "DEMO_EMBNORM_ITERS") if k in env},
                "rc": p.returncode, "stdout": norm(p.stdout), "stderr": norm(p.stderr)}

out = [run_case(sys.argv[1], *c) for c in CASES]
json.dump(out, open(sys.argv[2], "w"), indent=1)
print(len(out), "cases;", sum(o["rc"] == 0 for o in out), "rc 0")
