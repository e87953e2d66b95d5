"""Drawing the report's figures: in this process, or in a worker process started before the statistics.

analyze.py hands over figure jobs, (function of analysis/figures.py, arguments), and later collects
the paths. Without workers a job is drawn as soon as it is handed over. With workers (Linux, at
least 2 usable CPUs), a forked process imports matplotlib and draws the figures that need no
statistic while this process imports scipy and computes them (on 2 cores each import takes
about 1 s, and drawing the 5 figures of a stage about as long). Same jobs, same files either way;
errors come back in the order the jobs were handed over, so the first failing figure is reported.
Nothing here imports matplotlib in this process unless it draws itself.
"""
import hashlib
import os
import re
import sys

MAX_PROCESSES = 4   # processes drawing figures at once (a stage has 5 figures and its sweeps)


def slug(s):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s)).strip("_") or "x"


def file_stem(name, max_len=60):
    """A file-name stem for a stage (or parameter) name: its slug when that is the name itself;
    otherwise (characters replaced, or too long) a shortened slug plus a hash of the exact name, so
    distinct names (`x/y` and `x_y`, names differing past the cut) never share a file."""
    s = slug(name)
    if s == str(name) and len(s) <= max_len:
        return s
    digest = hashlib.sha1(str(name).encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{s[:max_len].rstrip('_.') or 'x'}_{digest}"


def draw(name, args):
    """One job: figures.<name>(*args), or plans.figure(figures, *args) for name 'sweep'.
    Returns the path written (None when the job has no figure to draw)."""
    from . import figures
    if name == "sweep":
        from . import plans
        return plans.figure(figures, *args)
    return getattr(figures, name)(*args)


def _outcome(job):
    try:
        return ("done", draw(*job))
    except OSError as e:   # a figure that cannot be written: reported by analyze.py as one line
        return ("failed", e)


def draw_batch(jobs, processes=1):
    """Outcomes ("done", path) or ("failed", OSError) of jobs [(name, args)], in order, drawn by
    `processes` processes: this one and forked copies of it (matplotlib imported once, before the
    fork). Each process takes the next job nobody has taken (an index read from a shared pipe), so
    a large figure does not hold up the rest. A copy that dies leaves its jobs to this process."""
    n = len(jobs)
    processes = min(processes, n)
    if processes <= 1 or not hasattr(os, "fork"):
        return [_outcome(j) for j in jobs]
    import pickle
    import struct
    take_r, take_w = os.pipe()
    os.write(take_w, b"".join(struct.pack("=i", i) for i in range(n)))   # n * 4 bytes, far below a pipe's capacity
    os.close(take_w)

    def work():
        done = []
        while True:
            b = os.read(take_r, 4)   # 4 bytes, read whole: the pipe only ever holds whole indices
            if not b:
                return done
            i = struct.unpack("=i", b)[0]
            done.append((i, _outcome(jobs[i])))

    children = []
    for _ in range(processes - 1):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:   # the copy: draw, send the outcomes, leave without running any exit handler
            code = 0
            try:
                os.close(r)
                try:
                    data = pickle.dumps(("ok", work()))
                except BaseException as e:   # a bug in a figure: raised again in the parent
                    data = pickle.dumps(("error", RuntimeError(f"figure process: {type(e).__name__}: {e}")))
                with os.fdopen(w, "wb") as f:
                    f.write(data)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(w)
        children.append((pid, r))
    outcomes, error = {}, None
    try:
        outcomes.update(work())
    finally:   # whatever happened here, collect the copies
        for pid, r in children:
            with os.fdopen(r, "rb") as f:
                data = f.read()
            os.waitpid(pid, 0)
            if data:
                status, value = pickle.loads(data)
                if status == "error":
                    error = error or value
                else:
                    outcomes.update(value)
        os.close(take_r)
    if error is not None:
        raise error
    return [outcomes[i] if i in outcomes else _outcome(jobs[i]) for i in range(n)]


def _import_figures():
    from . import figures  # noqa: F401  (matplotlib: imported once per worker, before its first job)


def _started():
    return os.getpid()


def usable_cpus():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_processes():
    """Processes to draw the figures: 0 (draw in this process) on 1 CPU or outside Linux (fork is
    the cheap way to start one, and only Linux forks safely a process that has loaded numpy); else
    one per CPU, at most MAX_PROCESSES."""
    if not sys.platform.startswith("linux"):
        return 0
    cpus = usable_cpus()
    return 0 if cpus < 2 else min(MAX_PROCESSES, cpus)


class Drawer:
    """Figure jobs, drawn in this process (processes=0), or by a worker process started now, which
    imports matplotlib while this process goes on and draws each batch of jobs with `processes`
    processes (itself and forked copies, draw_batch())."""

    def __init__(self, processes=0, import_here=False):
        """import_here: import matplotlib in this process first (once per process), so that this
        worker and every later one start with it; for a process that analyses again and again
        (tests, bench/bench_analyze.py), not for a one-off run, which has scipy to import meanwhile."""
        self._pool, self._processes, self._pending, self._batches = None, processes, [], []
        if processes > 0 and import_here:
            _import_figures()
        if processes > 0:
            import concurrent.futures as cf
            import multiprocessing as mp
            try:
                self._pool = cf.ProcessPoolExecutor(1, mp_context=mp.get_context("fork"), initializer=_import_figures)
                self._pool.submit(_started)   # starts the worker now: it imports matplotlib while we go on
            except (OSError, ValueError):
                self._pool = None   # no fork here (or no resources): draw in this process

    @property
    def parallel(self):
        return self._pool is not None

    def submit(self, kind, key, name, args):
        """Add one job, filed under `kind` with `key` in results(); drawn at the next flush()."""
        self._pending.append((kind, key, (name, args)))

    def flush(self):
        """Start drawing the jobs added since the last flush (here: draw them now)."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        jobs = [job for _, _, job in batch]
        outcome = None
        if self._pool is not None:
            try:
                outcome = self._pool.submit(draw_batch, jobs, self._processes)
            except RuntimeError:   # the worker died earlier: draw here from now on
                self._close()
        if outcome is None:
            outcome = draw_batch(jobs)
        self._batches.append((batch, outcome))

    def results(self, kinds):
        """{kind: [(key, path)]} for every kind in `kinds`, jobs in the order they were added; jobs
        that drew nothing are left out. Once every job has finished, raises the OSError of the
        first job that failed (a figure that could not be written)."""
        import concurrent.futures as cf
        self.flush()
        out, first_error = {k: [] for k in kinds}, None
        for batch, outcomes in self._batches:
            if isinstance(outcomes, cf.Future):
                try:
                    outcomes = outcomes.result()
                except cf.process.BrokenProcessPool:   # the worker died: draw this batch here
                    outcomes = draw_batch([job for _, _, job in batch])
            for (kind, key, _), (status, value) in zip(batch, outcomes):
                if status == "failed":
                    first_error = first_error or value
                elif value:
                    out[kind].append((key, value))
        self._batches = []
        if first_error is not None:
            raise first_error
        return out

    def _close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def close(self):
        """Stop the worker (waiting for it; jobs not collected are dropped)."""
        self._pending, self._batches = [], []
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
