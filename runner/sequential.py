"""./run_experiments.sh STAGE --sequential --max-seeds N [--batch K] ...: a group-sequential stage.

Runs the stage's baseline and one variant in batches of K seeds per condition, takes the decision of
analysis/sequential.py after every batch (a look), and stops as soon as the stage is decided
(docs/runner.md, "Sequential stages"; the statistics: docs/sequential.md).

- The design (question, metric, alpha, sides, spending, max runs, batch, baseline, variant) is written
  to <logs>/<stage>/sequential.json before the first run and never changed: a later command whose
  flags change it is refused with one line naming the keys (flags it omits take the recorded values).
- Seeds, per condition: the stage's list (the condition's own, else --seeds, else the stage's) in
  ascending order, then the integers after its largest. A batch takes, for each condition, as many
  seeds as the next look still needs: the first ones above the condition's largest seed with an
  outcome (ok, diverged, oom) that are not yet finished and were not tried by this command. Finished
  runs are reused; an interrupted or failed run above them is run again (moved aside first, as by
  the normal runner); one below them stays as it is (retrying it would change an earlier look).
- Each batch is an ordinary stage run (launch.Stage): claims, packing of GPU runs (place()), --jobs,
  --timeout, cost, the final table, Ctrl-C. An interrupted batch leaves the stage as the normal runner
  does; the same command continues it.

The decision is computed in this process: analysis.sequential imports numpy and scipy.special only
(no torch, no matplotlib), is imported once per stage (not for ordinary stages), keeps the t
reference (one seeded simulation per design) across the looks, and validates the design before the
first run; a subprocess per look would repeat the imports and the simulation at every look.
"""
import json
import os
import signal

from . import runinfo
from .cli import Exit, die, note
from .launch import Stage, iso_now

DESIGN_FILE = "sequential.json"
FINAL = ("ok", "diverged", "oom")   # outcomes the normal runner keeps (skips on a rerun)


def _analysis():
    """The sequential statistics (numpy + scipy.special; never torch)."""
    try:
        from analysis import decide as decide_mod
        from analysis import sequential as seq
    except ImportError as e:
        die(f"--sequential needs numpy and scipy in this interpreter ({e}); run 'make env' and use .venv/bin/python")
    return decide_mod, seq


def flag_design(a):
    """The design keys the command line gives (only those given)."""
    d = {}
    for attr, key, conv, what in (("max_seeds", "max_runs", int, "a positive integer"),
                                  ("batch", "batch", int, "a positive integer"),
                                  ("sides", "sides", int, "1 or 2"),
                                  ("alpha", "alpha", float, "a number, e.g. 0.05")):
        raw = getattr(a, attr)
        if raw:
            try:
                d[key] = conv(raw)
            except ValueError:
                die(f"--{attr.replace('_', '-')}: '{raw}' is not {what}")
    for attr in ("spending", "metric", "question", "variant"):
        if getattr(a, attr):
            d[attr] = getattr(a, attr)
    return d


class SequentialStage:
    def __init__(self, a, spec, rate, env):
        self.a, self.spec, self.rate, self.env = a, spec, rate, env
        self.dm, self.seq = _analysis()
        self.tried = {}        # condition -> seeds this command started (or found busy)
        self.printed = 0       # looks already printed
        self.bad = 0           # runs of this command that did not end ok

    # ------------------------------------------------------------------ checks and the design
    def check_usage(self):
        a, spec = self.a, self.spec
        if a.stage in ("demo", "sweep") or spec.force:
            die(f"--sequential: stage {a.stage} cannot be sequential (it is not a stage of seeded runs of one design)")
        if a.variants:
            die("--sequential runs the baseline and one variant: name it with --variant NAME (not --variants)")
        if a.force:
            die("--sequential reuses every finished run; --force would rerun them (use another --logs to start over)")
        if a.nnodes and int(a.nnodes) > 1:
            die("--sequential runs on one node (each look reads the runs node 0 wrote); drop --nnodes")

    def resolve_design(self):
        """(Design, path, already written). Refuses a changed design with one line."""
        Design, DesignError, matches = self.seq.Design, self.seq.DesignError, self.seq.design_matches
        stage_dir = os.path.join(self.logs, self.spec.stage_dir)
        path = os.path.join(stage_dir, DESIGN_FILE)
        flags = flag_design(self.a)
        names = [c.name for c in self.spec.conditions]
        try:
            if os.path.exists(path):
                try:
                    with open(path, encoding="utf-8") as f:
                        declared = json.load(f)
                except (OSError, UnicodeDecodeError, ValueError) as e:
                    die(f"{path}: unreadable ({type(e).__name__}); it fixes this stage's design: repair it, or use "
                        "another --logs")
                design = Design.from_dict(declared, path)
                changed = matches(design, Design.from_dict({**declared, **flags}, "the flags"))
                if changed:
                    die(f"{path} fixed the design before the first run; these flags change {', '.join(changed)}: "
                        "repeat the recorded values (or drop those flags), or start over under another --logs")
                written = True
            else:
                if "max_runs" not in flags:
                    die("--sequential needs --max-seeds N: the most finished runs per condition (the last look)")
                flags.setdefault("metric", self.spec.primary_metric)
                flags.setdefault("baseline", self.spec.baseline or "baseline")
                if "variant" not in flags:
                    others = [n for n in names if n != flags["baseline"]]
                    if flags.get("question") == "acceptance" and len(names) == 1:
                        others = names
                    if len(others) != 1:
                        die(f"--sequential: stage {self.spec.name} has conditions {', '.join(names)}: name the one "
                            f"under test with --variant NAME (compared with {flags['baseline']})")
                    flags["variant"] = others[0]
                design = Design.from_dict(flags, "--sequential flags")
                written = False
        except DesignError as e:
            die(str(e))
        for c in design.conditions:
            if c not in names:
                die(f"--sequential: condition '{c}' is not in stage {self.spec.name} (conditions: {', '.join(names)})")
        return design, path, written

    def write_design(self):
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            if os.path.exists(self.path):   # another runner wrote it meanwhile: it must agree
                self.design, _, _ = self.resolve_design()
                return
            runinfo.atomic_write_json(self.path, {**self.design.to_dict(), "created": iso_now()})
        except OSError as e:
            die(f"cannot write {self.path} ({e.strerror}); the design must be recorded before the first run")
        note(f"== design recorded in {self.path} (fixed from now on)")

    # ------------------------------------------------------------------ looks
    def stage_dir(self):
        return os.path.join(self.logs, self.spec.stage_dir)

    def look(self):
        """The decision on the finished runs now in the stage directory."""
        samples = {}
        if os.path.isdir(self.stage_dir()):
            samples, _, _ = self.dm.stage_samples(self.stage_dir(), self.design.metric)
        return self.seq.decide(self.design, {c: samples.get(c, []) for c in self.design.conditions})

    def print_looks(self, dec):
        for lk in dec.looks[self.printed:]:
            n = "/".join(str(v) for v in lk.n.values())
            fut = f", futility bound {lk.futility_stat:.3f}" if lk.futility_stat is not None else ""
            note(f"== look {lk.look} of {dec.planned_looks} ({n} runs per condition): statistic {lk.statistic:.3f} "
                 f"(df {lk.df:.1f}), efficacy bound {lk.bound_stat:.3f}{fut}, alpha spent {lk.alpha_spent:.4g} "
                 f"-> {lk.outcome}")
        self.printed = len(dec.looks)
        note(f"== sequential {self.dm.decision_line(self.spec.stage_dir, dec)}")

    # ------------------------------------------------------------------ seeds
    def seeds_of(self, cond):
        c = next(x for x in self.spec.conditions if x.name == cond)
        base = sorted(set(c.seeds or ([int(s) for s in self.a.seeds] if self.a.seeds else None) or self.spec.seeds))
        yield from base
        s = base[-1] + 1
        while True:
            yield s
            s += 1

    def next_batch(self, dec):
        """{condition: seeds to run} for the next look (module docstring: which seeds)."""
        batch = {}
        for cond, need in dec.runs_needed.items():
            if need <= 0:
                continue
            vdir = os.path.join(self.stage_dir(), cond)
            status = {}
            try:
                entries = os.listdir(vdir)
            except OSError:
                entries = []
            for e in entries:
                if e.startswith("seed_") and e[5:].isdigit():
                    status[int(e[5:])] = runinfo.status_of(os.path.join(vdir, e))
            done = [s for s, st in status.items() if st in FINAL]
            top = max(done) if done else None
            tried = self.tried.setdefault(cond, set())
            picked = []
            for s in self.seeds_of(cond):
                if len(picked) == need:
                    break
                if (top is not None and s <= top) or s in tried or status.get(s) in FINAL:
                    continue
                picked.append(s)
            batch[cond] = picked
        return batch

    # ------------------------------------------------------------------ the stage
    def on_signal(self, signum, frame):
        note("\n== interrupted between batches (no run was in progress); the same command continues the stage")
        raise Exit(130)

    def go(self):
        a = self.a
        self.check_usage()
        logs = a.logs or self.spec.default_logs or "experiment_logs"
        self.logs = os.path.abspath(logs)
        self.design, self.path, written = self.resolve_design()
        d = self.design
        what = (f"mean {d.metric} of {d.variant} vs target {d.target:g}" if d.question == "acceptance"
                else f"{d.variant} vs {d.baseline} on {d.metric}")
        note(f"== {a.stage} --sequential: {what}; {'two' if d.sides == 2 else 'one'}-sided alpha {d.alpha:g}, "
             f"{d.spending} spending, looks at {', '.join(map(str, d.look_sizes()))} runs per condition "
             f"(batch {d.batch}, at most {d.max_runs}); design: {self.path}"
             + ("" if written else " (to be written now)" if not a.dry else " (not written: dry run)"))
        if a.dry:
            return self.dry_run()
        if not written:
            self.write_design()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self.on_signal)
        dec = self.look()
        if dec.looks:
            note("== finished runs found: the looks they make")
            self.print_looks(dec)
        k = 0
        while not dec.stopped:
            batch = self.next_batch(dec)
            k += 1
            note(f"\n== batch {k}: " + "; ".join(f"{c} seed(s) {', '.join(map(str, s))}" for c, s in batch.items()))
            before = self.finished_counts()
            st = self.run_batch(batch)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, self.on_signal)
            self.bad += sum(r["status"] != "ok" for r in st.rows.values())
            if st.interrupted:
                note("== interrupted: the stage is undecided; the same command continues it (finished runs are reused)")
                return 130
            dec = self.look()
            self.print_looks(dec)
            if not dec.stopped and self.finished_counts() == before:
                note(f"== batch {k}: no run finished (see the table above); the stage stays undecided: fix the failures "
                     "and rerun the same command")
                return 1
        n = max(lk.n[d.conditions[0]] for lk in dec.looks)
        note(f"== {a.stage}: decided at look {dec.look} of {dec.planned_looks} with {n} run(s) per condition "
             f"(at most {d.max_runs}); report: python analyze.py --logs {self.logs}")
        return 1 if self.bad else 0

    def finished_counts(self):
        if not os.path.isdir(self.stage_dir()):
            return {}
        _, counts, _ = self.dm.stage_samples(self.stage_dir(), self.design.metric)
        return {c: counts.get(c, {}).get("finished", 0) for c in self.design.conditions}

    def batch_spec(self, batch):
        """A copy of the stage holding only this batch's (condition, seeds)."""
        import copy
        spec = copy.copy(self.spec)
        spec.conditions = []
        for c in self.spec.conditions:
            if batch.get(c.name):
                cc = copy.copy(c)
                cc.seeds = list(batch[c.name])
                spec.conditions.append(cc)
        return spec

    def run_batch(self, batch):
        st = Stage(self.a, self.batch_spec(batch), self.rate, self.env)
        st.experiment_extra = {"sequential": {"design_file": self.path, "batch_seeds": batch}}
        for cond, seeds in batch.items():
            self.tried.setdefault(cond, set()).update(seeds)
        try:
            st.go()
        except Exit as e:
            if e.code != 0:
                raise
        return st

    def dry_run(self):
        dec = self.look()
        self.print_looks(dec)
        if dec.stopped:
            note("(dry run: nothing was run or written)")
            return 0
        batch = self.next_batch(dec)
        note(f"== the next batch: " + "; ".join(f"{c} seed(s) {', '.join(map(str, s))}" for c, s in batch.items())
             + " (later batches depend on the looks)")
        return Stage(self.a, self.batch_spec(batch), self.rate, self.env).go()


def main(a, spec, rate, env):
    return SequentialStage(a, spec, rate, env).go()
