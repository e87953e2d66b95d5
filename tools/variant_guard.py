"""Keep the train_gpt_<name>.py variants honest copies of train_gpt.py.

A variant is a full copy of train_gpt.py that differs from it only
  - in its module docstring, and
  - inside marked regions:   # --- variant: <name> ---   ...   # --- end variant ---
    (<name> is the part of the file name after "train_gpt_"; a region may add words after it,
    e.g. "# --- variant: lmd (flags) ---"; regions do not nest).
Its docstring also records the train_gpt.py it was last synced with, as a line
    Synced with train_gpt.py git blob <40 hex digits>.
(`git hash-object train_gpt.py`), so that a change to train_gpt.py, even one inside code that a region
replaces, is noticed: the variant must be re-synced.

    python tools/variant_guard.py check                 # every train_gpt_*.py next to train_gpt.py
    python tools/variant_guard.py check train_gpt_palm.py --regions   # also list what each region replaces
    python tools/variant_guard.py sync train_gpt_palm.py train_gpt_lmd.py
    python tools/variant_guard.py sync --base-rev HEAD     # against the committed train_gpt.py

`sync` brings a variant up to the current train_gpt.py with a three-way merge (`git merge-file`): the
old base is the train_gpt.py blob recorded in the variant (looked up in git; or --old-base FILE), the
variant's docstring is kept as it is. Where train_gpt.py changed lines that a region also changed, the
merge stops with conflict markers written to <variant>.merge (the variant itself is not touched):
resolve them there, then move it over the variant and run `check` (the .merge file records the new base). `sync --transplant` needs no
old base: code outside the regions is taken from train_gpt.py and the regions are kept - a change of
train_gpt.py inside replaced code is then NOT merged, so prefer the three-way merge.
Exit status: 0 all good, 1 drift/conflict found, 2 bad input.
"""
import argparse
import ast
import difflib
import glob
import hashlib
import os
import re
import subprocess
import sys
import tempfile

BASE_NAME = "train_gpt.py"
START_RE = re.compile(r"^\s*# --- variant: (.*?) ---\s*$")
END_RE = re.compile(r"^\s*# --- end variant ---\s*$")
ANY_MARK_RE = re.compile(r"#\s*-+\s*(end\s+)?variant\b")  # something meant as a marker, maybe misspelt
SYNC_RE = re.compile(r"Synced with train_gpt\.py git blob ([0-9a-f]{40})\.")


class GuardError(Exception):
    """Input the guard cannot work with (unreadable file, broken syntax, unbalanced regions)."""


def git_blob_sha(text):
    data = text.encode("utf-8")
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def variant_name(path):
    stem = os.path.splitext(os.path.basename(path))[0]
    return stem[len("train_gpt_"):] if stem.startswith("train_gpt_") else stem


def discover(base_path):
    """Every train_gpt_<name>.py in the base's directory."""
    d = os.path.dirname(os.path.abspath(base_path))
    return sorted(p for p in glob.glob(os.path.join(d, "train_gpt_*.py")) if os.path.isfile(p))


def read_text(path):
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise GuardError(f"cannot read {path}: {e}")


def docstring_span(text, path):
    """(first, last) 0-based line indices of the module docstring, or None when there is none."""
    try:
        tree = ast.parse(text, filename=path)
    except SyntaxError as e:
        raise GuardError(f"{path}:{e.lineno}: not valid Python ({e.msg}); fix it before checking")
    if tree.body and isinstance(tree.body[0], ast.Expr) and isinstance(getattr(tree.body[0], "value", None), ast.Constant) \
            and isinstance(tree.body[0].value.value, str):
        return tree.body[0].lineno - 1, tree.body[0].end_lineno - 1
    return None


def find_regions(lines, path, name=None, docstring=None):
    """[(start, end)] 0-based line indices of the marker lines of each region (inclusive); lines of the
    docstring span are prose, not markers. Raises GuardError for an unbalanced, nested, unnamed or
    misnamed region, or a misspelt marker."""
    regions, open_at = [], None
    for i, line in enumerate(lines):
        if docstring is not None and docstring[0] <= i <= docstring[1]:
            continue
        m = START_RE.match(line)
        if m:
            label = m.group(1).strip()
            if open_at is not None:
                raise GuardError(f"{path}:{i + 1}: region opened inside the region opened at line {open_at + 1} "
                                 f"(regions do not nest); close it with '# --- end variant ---'")
            if not label:
                raise GuardError(f"{path}:{i + 1}: region without a name; write '# --- variant: {name or '<name>'} ---'")
            if name is not None and label.split()[0] != name:
                raise GuardError(f"{path}:{i + 1}: region named '{label}' in the {name} variant; "
                                 f"write '# --- variant: {name} ---'")
            open_at = i
        elif END_RE.match(line):
            if open_at is None:
                raise GuardError(f"{path}:{i + 1}: '# --- end variant ---' without an opening '# --- variant: ... ---'")
            regions.append((open_at, i))
            open_at = None
        elif ANY_MARK_RE.search(line):
            raise GuardError(f"{path}:{i + 1}: looks like a region marker but is not one: {line.strip()!r}; "
                             f"markers are exactly '# --- variant: <name> ---' and '# --- end variant ---'")
    if open_at is not None:
        raise GuardError(f"{path}:{open_at + 1}: region never closed; add '# --- end variant ---'")
    return regions


def _mask_docstring(lines, span):
    """The lines with the docstring replaced by one placeholder line, and a map back to the real indices."""
    if span is None:
        return list(lines), list(range(len(lines)))
    a, b = span
    masked = lines[:a] + ["<module docstring>\n"] + lines[b + 1:]
    index = list(range(a)) + [a] + list(range(b + 1, len(lines)))
    return masked, index


class Comparison:
    """train_gpt.py against one variant: the difflib opcodes on lines (docstrings masked), which of
    them lie inside regions, and the variant as it would be with only the allowed differences."""

    def __init__(self, base_text, variant_text, base_path=BASE_NAME, variant_path="variant"):
        self.base_path, self.variant_path = base_path, variant_path
        self.base_lines = base_text.splitlines(keepends=True)
        self.var_lines = variant_text.splitlines(keepends=True)
        base_doc = docstring_span(base_text, base_path)
        self.var_doc = docstring_span(variant_text, variant_path)
        self.name = variant_name(variant_path)
        for i, line in enumerate(self.base_lines):
            if (START_RE.match(line) or END_RE.match(line)) and not (base_doc and base_doc[0] <= i <= base_doc[1]):
                raise GuardError(f"{base_path}:{i + 1}: the base holds a variant region marker; only variants may")
        self.regions = find_regions(self.var_lines, variant_path, self.name, self.var_doc)
        inside = [False] * len(self.var_lines)
        for s, e in self.regions:
            for j in range(s, e + 1):
                inside[j] = True
        self.base_masked, self.base_index = _mask_docstring(self.base_lines, base_doc)
        self.var_masked, self.var_index = _mask_docstring(self.var_lines, self.var_doc)
        if self.var_doc is not None:  # the docstring's placeholder line may differ freely
            inside[self.var_doc[0]] = True
        self.inside = inside
        sm = difflib.SequenceMatcher(None, self.base_masked, self.var_masked, autojunk=False)
        self.opcodes = sm.get_opcodes()
        self.drift = []  # opcodes (on masked lines) outside every region
        for n, op in enumerate(self.opcodes):
            if op[0] != "equal" and not any(self._allowed(j1, j2) for j1, j2 in self._placements(n)):
                self.drift.append(op)

    def _placements(self, n):
        """Where opcode n could equally well sit: an insertion or deletion whose edge lines repeat the
        lines beside it (typically blank lines next to a region) can slide up or down without changing
        the result; difflib picks one of these placements arbitrarily. Yields variant ranges (j1, j2)."""
        tag, i1, i2, j1, j2 = self.opcodes[n]
        yield j1, j2
        if tag not in ("insert", "delete"):
            return
        prev_eq = self.opcodes[n - 1][4] - self.opcodes[n - 1][3] if n > 0 and self.opcodes[n - 1][0] == "equal" else 0
        next_eq = self.opcodes[n + 1][4] - self.opcodes[n + 1][3] \
            if n + 1 < len(self.opcodes) and self.opcodes[n + 1][0] == "equal" else 0
        seq, a, b = (self.var_masked, j1, j2) if tag == "insert" else (self.base_masked, i1, i2)
        for k in range(1, next_eq + 1):  # slide down: the first moved line equals the line after the block
            if seq[a + k - 1] != seq[b + k - 1]:
                break
            yield (j1 + k, j2 + k) if tag == "insert" else (j1 + k, j1 + k)
        for k in range(1, prev_eq + 1):  # slide up
            if seq[b - k] != seq[a - k]:
                break
            yield (j1 - k, j2 - k) if tag == "insert" else (j1 - k, j1 - k)

    def _allowed(self, j1, j2):
        real = [self.var_index[j] for j in range(j1, j2)]
        if real:  # inserted or replacing lines: every one inside a region (or the docstring)
            return all(self.inside[j] for j in real)
        # a deletion: the gap between masked lines j1-1 and j1 must lie inside one region
        if j1 == 0 or j1 >= len(self.var_masked):
            return False
        before, after = self.var_index[j1 - 1], self.var_index[j1]
        return any(s <= before and after <= e for s, e in self.regions)

    def ok(self):
        return not self.drift

    def expected_lines(self):
        """The base with only the allowed differences applied: what the variant should be."""
        out = []
        for tag, i1, i2, j1, j2 in self.opcodes:
            if tag == "equal" or (tag, i1, i2, j1, j2) in self.drift:
                out.extend(self.base_masked[i1:i2])
            else:
                out.extend(self.var_masked[j1:j2])
        # put the variant's own docstring back in place of the placeholder
        if self.var_doc is not None:
            a, b = self.var_doc
            k = out.index("<module docstring>\n")
            out[k:k + 1] = self.var_lines[a:b + 1]
        return out

    def drift_diff(self):
        """A unified diff from what the variant should be to what it is: exactly the drift."""
        return "".join(difflib.unified_diff(self.expected_lines(), self.var_lines,
                                            fromfile=f"{self.base_path} (+ the variant's regions)",
                                            tofile=self.variant_path, n=3))

    def region_report(self):
        """For each region, the base lines it stands in place of (1-based, inclusive), for review."""
        rows = []
        for s, e in self.regions:
            replaced = []
            for tag, i1, i2, j1, j2 in self.opcodes:
                if tag in ("replace", "delete", "insert") and i2 > i1:
                    real = [self.var_index[j] for j in range(j1, j2)]
                    gap_inside = not real and j1 > 0 and j1 < len(self.var_masked) and \
                        s <= self.var_index[j1 - 1] and self.var_index[j1] <= e
                    if (real and s <= real[0] and real[-1] <= e) or gap_inside:
                        replaced.append((self.base_index[i1] + 1, self.base_index[i2 - 1] + 1))
            what = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in replaced) or "nothing (pure insertion)"
            rows.append(f"{self.variant_path}:{s + 1}-{e + 1} {self.var_lines[s].strip()} replaces "
                        f"{self.base_path} lines {what}")
        return rows

    def synced_with(self):
        """The blob sha recorded in the variant's docstring, or None."""
        if self.var_doc is None:
            return None
        a, b = self.var_doc
        m = SYNC_RE.search("".join(self.var_lines[a:b + 1]))
        return m.group(1) if m else None


def check(base_path, variant_path, require_sync_record=True, base_text=None):
    """List of problems (each a readable paragraph); empty when the variant is in order.
    `base_text` stands in for the content of `base_path` when given (e.g. a committed version)."""
    base_text = read_text(base_path) if base_text is None else base_text
    var_text = read_text(variant_path)
    c = Comparison(base_text, var_text, base_path, variant_path)
    problems = []
    if not c.regions:
        problems.append(f"{variant_path}: no '# --- variant: {c.name} ---' region; a variant changes code only "
                        f"inside marked regions")
    if c.var_doc is None:
        problems.append(f"{variant_path}: no module docstring; a variant says what it changes in its docstring")
    if c.drift:
        problems.append(f"{variant_path} differs from {base_path} outside its marked regions and docstring "
                        f"({len(c.drift)} place(s)). Re-sync it (python tools/variant_guard.py sync "
                        f"{os.path.basename(variant_path)}) or move the change into a region:\n" + c.drift_diff())
    if require_sync_record and c.var_doc is not None:
        rec, now = c.synced_with(), git_blob_sha(base_text)
        if rec is None:
            problems.append(f"{variant_path}: its docstring does not say which {base_path} it was synced with; run "
                            f"`python tools/variant_guard.py sync {os.path.basename(variant_path)}` to record it")
        elif rec != now:
            problems.append(f"{variant_path} was synced with {base_path} blob {rec[:12]}, but {base_path} is now "
                            f"{now[:12]}: train_gpt.py changed since; run `python tools/variant_guard.py sync "
                            f"{os.path.basename(variant_path)}` (three-way merge) so that the change reaches the variant")
    return problems


# ----------------------------------------------------------------------------- sync


def _git(repo_dir, *args, input_text=None):
    return subprocess.run(["git", "-C", repo_dir, *args], capture_output=True, text=True, input=input_text)


def find_blob(repo_dir, sha):
    """The text of a blob from the repository's object store, or None."""
    try:
        r = _git(repo_dir, "cat-file", "blob", sha)
    except OSError:
        return None
    return r.stdout if r.returncode == 0 else None


def set_sync_record(text, path, sha):
    """The variant text with its 'Synced with' line set to `sha` (added as the docstring's last line)."""
    lines = text.splitlines(keepends=True)
    span = docstring_span(text, path)
    if span is None:
        raise GuardError(f"{path}: no module docstring to record the sync in; add one")
    a, b = span
    record = f"Synced with train_gpt.py git blob {sha}.\n"
    for k in range(a, b + 1):
        if SYNC_RE.search(lines[k]):
            lines[k] = SYNC_RE.sub(f"Synced with train_gpt.py git blob {sha}.", lines[k])
            return "".join(lines)
    closing = lines[b]
    if closing.strip() == '"""':  # the usual layout: the closing quotes on their own line
        lines.insert(b, record)
    else:
        raise GuardError(f"{path}:{b + 1}: put the docstring's closing quotes on their own line so that the sync "
                         f"record can be added above them")
    return "".join(lines)


def _body_with_docstring(text, path, doc_lines):
    """The text with its module docstring replaced by `doc_lines`."""
    lines = text.splitlines(keepends=True)
    span = docstring_span(text, path)
    if span is None:
        return "".join(doc_lines + lines)
    a, b = span
    return "".join(lines[:a] + doc_lines + lines[b + 1:])


def three_way(variant_text, old_base_text, new_base_text, variant_path):
    """(merged text, number of conflicts) via git merge-file; docstrings are kept out of the merge
    (the variant's own docstring is the result's)."""
    var_lines = variant_text.splitlines(keepends=True)
    span = docstring_span(variant_text, variant_path)
    placeholder = ['"""<module docstring>"""\n']
    ours = _body_with_docstring(variant_text, variant_path, placeholder)
    old = _body_with_docstring(old_base_text, "old base", placeholder)
    new = _body_with_docstring(new_base_text, "new base", placeholder)
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for name, t in (("variant", ours), ("old_base", old), ("new_base", new)):
            p = os.path.join(d, name)
            with open(p, "w", encoding="utf-8", newline="") as f:
                f.write(t)
            paths.append(p)
        try:
            r = subprocess.run(["git", "merge-file", "-p", "-L", os.path.basename(variant_path), "-L",
                                "train_gpt.py (old)", "-L", "train_gpt.py (new)", *paths],
                               capture_output=True, text=True)
        except OSError as e:
            raise GuardError(f"cannot run git merge-file ({e}); use `sync --transplant`")
    if r.returncode < 0 or r.returncode > 127:
        raise GuardError(f"git merge-file failed: {r.stderr.strip()}")
    merged = r.stdout
    if span is not None:
        a, b = span
        merged = merged.replace(placeholder[0], "".join(var_lines[a:b + 1]), 1)
    return merged, r.returncode


def sync(base_path, variant_path, old_base=None, transplant=False, out=print, base_text=None):
    """Bring one variant up to the current base (or `base_text`, e.g. the committed one). Returns 0
    (synced or already so), 1 (conflict or drift left); raises GuardError for bad input. Never
    overwrites the variant with a broken result."""
    base_text = read_text(base_path) if base_text is None else base_text
    var_text = read_text(variant_path)
    now = git_blob_sha(base_text)
    c = Comparison(base_text, var_text, base_path, variant_path)
    rec = c.synced_with()
    name = os.path.basename(variant_path)
    if c.var_doc is None:
        raise GuardError(f"{variant_path}: no module docstring; a variant says what it changes (and which "
                         f"train_gpt.py it was synced with) in its docstring")
    merge_path = variant_path + ".merge"
    if os.path.exists(merge_path):
        raise GuardError(f"{merge_path} exists (an earlier unresolved merge); resolve or remove it first")

    def keep_merge(text):
        with open(merge_path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    if rec == now and c.ok():
        out(f"{name}: already synced with {base_path} ({now[:12]})")
        return 0
    if transplant:
        merged = "".join(c.expected_lines())
        how = "transplanted its regions onto the current base"
    else:
        if old_base is not None:
            old_text = read_text(old_base)
        elif rec is not None:
            old_text = find_blob(os.path.dirname(os.path.abspath(base_path)), rec)
            if old_text is None:
                raise GuardError(f"{variant_path}: the train_gpt.py it was synced with (blob {rec[:12]}) is not in git; "
                                 f"pass that file with --old-base FILE, or use --transplant")
        elif c.ok():  # never recorded, but a clean copy of the current base: record it
            old_text = base_text
        else:
            raise GuardError(f"{variant_path}: no sync record and it differs from {base_path} outside its regions; "
                             f"pass the train_gpt.py it was copied from with --old-base FILE (e.g. from "
                             f"`git show REV:train_gpt.py`), or use --transplant")
        merged, conflicts = three_way(var_text, old_text, base_text, variant_path)
        if conflicts:
            # the .merge file already records the new base, so that once resolved it is synced
            # (text substitution: a file with conflict markers does not parse)
            keep_merge(SYNC_RE.sub(f"Synced with train_gpt.py git blob {now}.", merged, count=1))
            out(f"{name}: {conflicts} conflict(s): train_gpt.py changed lines that a region also changes. "
                f"Resolve the <<<<<<< markers in {merge_path}, move it over {name}, then run check")
            return 1
        how = "three-way merged the changes of train_gpt.py"
    merged = set_sync_record(merged, variant_path, now)
    c2 = Comparison(base_text, merged, base_path, variant_path)  # raises on broken syntax: nothing written
    if not c2.ok():
        keep_merge(merged)
        out(f"{name}: differences outside the regions remain after the merge (result in {merge_path}); move "
            f"them into a region, or use --transplant to drop them:\n{c2.drift_diff()}")
        return 1
    if merged != var_text:
        tmp = variant_path + ".tmp"
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(merged)
        os.replace(tmp, variant_path)
    out(f"{name}: {how}; now synced with {base_path} ({now[:12]})")
    return 0


def main(argv=None):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = argparse.ArgumentParser(description="Check or re-sync the train_gpt_*.py variants against train_gpt.py.")
    p.add_argument("command", choices=["check", "sync"])
    p.add_argument("variants", nargs="*", help="variant files (default: every train_gpt_*.py next to the base)")
    p.add_argument("--base", default=os.path.join(here, BASE_NAME), help="the base script")
    p.add_argument("--base-rev", help="use the base as committed at this git revision (e.g. HEAD) instead of the "
                                      "file as it is in the working tree")
    p.add_argument("--old-base", help="sync: the train_gpt.py the variant was last synced with (default: the blob "
                                      "its docstring records, from git)")
    p.add_argument("--transplant", action="store_true",
                   help="sync without an old base: code outside the regions from the base, regions kept")
    p.add_argument("--regions", action="store_true", help="check: list the base lines each region replaces")
    a = p.parse_intermixed_args(argv)
    if not os.path.isfile(a.base):
        print(f"error: --base {a.base} is not a file", file=sys.stderr)
        return 2
    base_text = None
    if a.base_rev:
        rel = os.path.relpath(os.path.abspath(a.base), here)
        r = _git(here, "show", f"{a.base_rev}:{rel}")
        if r.returncode != 0:
            print(f"error: --base-rev {a.base_rev}: git has no {rel} there ({r.stderr.strip()})", file=sys.stderr)
            return 2
        base_text = r.stdout
    variants = a.variants or discover(a.base)
    if not variants:
        print(f"no train_gpt_*.py next to {a.base}")
        return 0
    if a.old_base and len(variants) != 1:
        print("error: --old-base applies to one variant at a time; name that variant", file=sys.stderr)
        return 2
    worst = 0
    for v in variants:
        try:
            if a.command == "check":
                problems = check(a.base, v, base_text=base_text)
                if a.regions:
                    for row in Comparison(base_text or read_text(a.base), read_text(v), a.base, v).region_report():
                        print(row)
                if problems:
                    worst = max(worst, 1)
                    for pr in problems:
                        print(pr)
                else:
                    print(f"{os.path.basename(v)}: ok")
            else:
                worst = max(worst, sync(a.base, v, a.old_base, a.transplant, base_text=base_text))
        except GuardError as e:
            print(f"error: {e}", file=sys.stderr)
            worst = 2
    return worst


if __name__ == "__main__":
    sys.exit(main())
