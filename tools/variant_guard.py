"""Keep the train_gpt_<name>.py variants honest copies of train_gpt.py.

A variant differs from train_gpt.py only in its module docstring and inside marked regions
    # --- variant: <name> ---   ...   # --- end variant ---
(<name> is the file name after "train_gpt_", words may follow it; regions do not nest). Its docstring
records the train_gpt.py it was synced with, `Synced with train_gpt.py git blob <sha1>.`
(`git hash-object train_gpt.py`), so that a change of train_gpt.py is noticed even inside code a region replaces.

    python tools/variant_guard.py check [VARIANT ...]   # default: every train_gpt_*.py next to train_gpt.py
    python tools/variant_guard.py sync [VARIANT ...] [--old-base FILE]

`sync` three-way merges (`git merge-file`) the variant, the train_gpt.py it was synced with (the recorded
blob, read from git, or --old-base FILE) and the current train_gpt.py; the variant's docstring is kept out of
the merge. On a conflict the merge goes to <variant>.merge and the variant is not touched: resolve the
markers there, move it over the variant, run `check`. Exit status: 0 good, 1 drift or conflict, 2 bad input.
"""
import argparse, ast, difflib, glob, hashlib, os, re, subprocess, sys, tempfile

START_RE = re.compile(r"^\s*# --- variant: (.*?) ---\s*$")
END_RE = re.compile(r"^\s*# --- end variant ---\s*$")
ANY_MARK_RE = re.compile(r"#\s*-+\s*(end\s+)?variant\b")  # meant as a marker, maybe misspelt
SYNC_RE = re.compile(r"Synced with train_gpt\.py git blob ([0-9a-f]{40})\.")
DOC = '"""<module docstring>"""\n'  # stands in for each file's docstring in comparisons and merges


class GuardError(Exception):
    """Input the guard cannot work with (an unreadable file, broken syntax, bad markers)."""


def git_blob_sha(text):
    data = text.encode("utf-8")
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def discover(base_path):
    return sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(base_path)), "train_gpt_*.py")))


def read(path):
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise GuardError(f"cannot read {path}: {e}")


def split(text, path):
    """(docstring, [(line, 1-based number)] with the docstring as the one line DOC); docstring None if absent."""
    try:
        body = ast.parse(text, filename=path).body
    except SyntaxError as e:
        raise GuardError(f"{path}:{e.lineno}: not valid Python ({e.msg}); fix it before checking")
    lines = text.splitlines(keepends=True)
    rows = [(line, i + 1) for i, line in enumerate(lines)]
    if not (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        return None, rows
    a, b = body[0].lineno - 1, body[0].end_lineno
    return "".join(lines[a:b]), rows[:a] + [(DOC, a + 1)] + rows[b:]


def regions(rows, path, name):
    """[(start, end)] row indices of each region's marker lines; GuardError for a bad marker."""
    found, open_at = [], None
    for i, (line, n) in enumerate(rows):
        m = START_RE.match(line)
        if m:
            label = m.group(1).strip()
            if open_at is not None:
                raise GuardError(f"{path}:{n}: region opened inside the region opened at line {rows[open_at][1]} "
                                 f"(regions do not nest); close it with '# --- end variant ---'")
            if not label or label.split()[0] != name:
                raise GuardError(f"{path}:{n}: region {'without a name' if not label else f'named {label!r}'} in the "
                                 f"{name} variant; write '# --- variant: {name} ---'")
            open_at = i
        elif END_RE.match(line):
            if open_at is None:
                raise GuardError(f"{path}:{n}: '# --- end variant ---' without an opening '# --- variant: ... ---'")
            found.append((open_at, i))
            open_at = None
        elif ANY_MARK_RE.search(line):
            raise GuardError(f"{path}:{n}: looks like a region marker but is not one: {line.strip()!r}; markers "
                             f"are exactly '# --- variant: {name} ---' and '# --- end variant ---'")
    if open_at is not None:
        raise GuardError(f"{path}:{rows[open_at][1]}: region never closed; add '# --- end variant ---'")
    return found


def fits(base, var, found):
    """Whether `var` is `base` with each region standing in for some run of base lines: the pieces between
    regions must appear in the base in order, the first at its start and the last at its end."""
    cuts = [-1] + [i for r in found for i in r] + [len(var)]
    pieces = [var[cuts[k] + 1:cuts[k + 1]] for k in range(0, len(cuts), 2)]
    if len(pieces) == 1:
        return base == var
    if base[:len(pieces[0])] != pieces[0] or base[len(base) - len(pieces[-1]):] != pieces[-1]:
        return False
    pos = len(pieces[0])
    for piece in pieces[1:-1]:  # the leftmost match of each piece leaves the most room for the rest
        pos = next((j for j in range(pos, len(base) - len(piece) + 1) if base[j:j + len(piece)] == piece), None)
        if pos is None:
            return False
        pos += len(piece)
    return pos <= len(base) - len(pieces[-1])


def drift_diff(base, var, found, var_path):
    """A unified diff from the base with the variant's region changes applied to the variant: the drift."""
    inside = {j for s, e in found for j in range(s, e + 1)}
    expected = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, base, var, autojunk=False).get_opcodes():
        in_region = all(j in inside for j in range(j1, j2)) if j2 > j1 else {j1 - 1, j1} <= inside
        expected += var[j1:j2] if tag != "equal" and in_region else base[i1:i2]
    return "".join(difflib.unified_diff(expected, var, "train_gpt.py (+ the variant's regions)", var_path))


def check(base_path, variant_path, require_sync_record=True, base_text=None, variant_text=None):
    """The problems found (readable paragraphs); empty when the variant is in order. `base_text` and
    `variant_text` stand in for the files' contents when given."""
    base_text = read(base_path) if base_text is None else base_text
    doc, var_rows = split(read(variant_path) if variant_text is None else variant_text, variant_path)
    name = os.path.basename(variant_path)[len("train_gpt_"):-len(".py")]
    found = regions(var_rows, variant_path, name)
    base, var = [line for line, _ in split(base_text, base_path)[1]], [line for line, _ in var_rows]
    problems = []
    if not found:
        problems.append(f"{variant_path}: no '# --- variant: {name} ---' region; a variant changes code only there")
    if doc is None:
        problems.append(f"{variant_path}: no module docstring; a variant says what it changes in its docstring")
    if not fits(base, var, found):
        problems.append(f"{variant_path} differs from {base_path} outside its marked regions and docstring. Re-sync "
                        f"it (python tools/variant_guard.py sync {os.path.basename(variant_path)}) or move the change "
                        f"into a region:\n" + drift_diff(base, var, found, variant_path))
    record = SYNC_RE.search(doc or "")
    if require_sync_record and doc is not None and not record:
        problems.append(f"{variant_path}: its docstring does not say which {base_path} it was synced with; run "
                        f"`python tools/variant_guard.py sync {os.path.basename(variant_path)}` to record it")
    elif require_sync_record and record and record.group(1) != git_blob_sha(base_text):
        problems.append(f"{variant_path} was synced with {base_path} blob {record.group(1)[:12]}, but train_gpt.py "
                        f"changed since; run `python tools/variant_guard.py sync {os.path.basename(variant_path)}` "
                        f"(three-way merge) so that the change reaches the variant")
    return problems


def set_sync_record(text, path, sha):
    """The variant with its docstring's sync record set to `sha` (added above the closing quotes)."""
    doc, _ = split(text, path)
    if doc is None or not doc.rstrip().endswith('\n"""'):
        raise GuardError(f"{path}: the module docstring needs its closing quotes on their own line for the record")
    record = f"Synced with train_gpt.py git blob {sha}."
    new = SYNC_RE.sub(record, doc) if SYNC_RE.search(doc) else doc.rstrip()[:-3] + record + '\n"""'
    return text.replace(doc.rstrip(), new.rstrip(), 1)


def three_way(variant_text, old_text, new_text, path):
    """(merged text, number of conflicts) by git merge-file, with every docstring left out of the merge."""
    doc = split(variant_text, path)[0] or ""
    with tempfile.TemporaryDirectory() as d:
        files = []
        for k, text in enumerate((variant_text, old_text, new_text)):
            files.append(os.path.join(d, str(k)))
            with open(files[-1], "w", encoding="utf-8", newline="") as f:
                f.write("".join(line for line, _ in split(text, path)[1]))
        r = subprocess.run(["git", "merge-file", "-p", "-L", os.path.basename(path), "-L", "train_gpt.py (old)",
                            "-L", "train_gpt.py (new)", *files], capture_output=True, text=True)
    if not 0 <= r.returncode <= 127:
        raise GuardError(f"git merge-file failed: {r.stderr.strip()}")
    return r.stdout.replace(DOC, doc, 1), r.returncode


def sync(base_path, variant_path, old_base=None, out=print):
    """Bring one variant up to the current train_gpt.py. Returns 0 (synced) or 1 (conflict or drift left in
    <variant>.merge); never overwrites the variant with a broken result or an unresolved .merge file."""
    base_text, var_text, name = read(base_path), read(variant_path), os.path.basename(variant_path)
    now, merge_path = git_blob_sha(base_text), variant_path + ".merge"
    if os.path.exists(merge_path):
        raise GuardError(f"{merge_path} exists (an earlier unresolved merge); resolve or remove it first")
    problems = check(base_path, variant_path, base_text=base_text)
    if not problems:
        out(f"{name}: already synced with {base_path} ({now[:12]})")
        return 0
    doc = split(var_text, variant_path)[0]
    if doc is None:
        raise GuardError(f"{variant_path}: no module docstring; a variant says what it changes (and its sync) there")
    record = SYNC_RE.search(doc)
    if old_base:
        old_text = read(old_base)
    elif record:
        r = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(base_path)), "cat-file", "blob",
                            record.group(1)], capture_output=True, text=True)
        if r.returncode:
            raise GuardError(f"{variant_path}: the train_gpt.py it was synced with ({record.group(1)[:12]}) is not "
                             f"in git; pass that file with --old-base FILE")
        old_text = r.stdout
    elif not check(base_path, variant_path, require_sync_record=False, base_text=base_text):
        old_text = base_text  # a clean copy without a record: record the current base
    else:
        raise GuardError(f"{variant_path}: no sync record and it differs from {base_path} outside its regions; pass "
                         f"the train_gpt.py it was copied from with --old-base FILE (e.g. `git show REV:train_gpt.py`)")
    merged, conflicts = three_way(var_text, old_text, base_text, variant_path)
    if conflicts:  # the .merge file records the new base already, so that once resolved it is synced
        with open(merge_path, "w", encoding="utf-8", newline="") as f:
            f.write(SYNC_RE.sub(f"Synced with train_gpt.py git blob {now}.", merged, count=1))
        out(f"{name}: {conflicts} conflict(s): train_gpt.py changed lines that a region also changes. Resolve the "
            f"<<<<<<< markers in {merge_path}, move it over {name}, then run check")
        return 1
    merged = set_sync_record(merged, variant_path, now)
    left = check(base_path, variant_path, base_text=base_text, variant_text=merged)  # GuardError: nothing written
    if left:
        with open(merge_path, "w", encoding="utf-8", newline="") as f:
            f.write(merged)
        out(f"{name}: differences outside the regions remain after the merge (result in {merge_path}); move them "
            f"into a region:\n" + "\n".join(left))
        return 1
    with open(variant_path + ".tmp", "w", encoding="utf-8", newline="") as f:
        f.write(merged)
    os.replace(variant_path + ".tmp", variant_path)
    out(f"{name}: three-way merged the changes of train_gpt.py; now synced with {base_path} ({now[:12]})")
    return 0


def main(argv=None):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = argparse.ArgumentParser(description="Check or re-sync the train_gpt_*.py variants against train_gpt.py.")
    p.add_argument("command", choices=["check", "sync"])
    p.add_argument("variants", nargs="*", help="variant files (default: every train_gpt_*.py next to the base)")
    p.add_argument("--base", default=os.path.join(here, "train_gpt.py"), help="the base script")
    p.add_argument("--old-base", help="sync: the train_gpt.py the variant was synced with (default: its record)")
    a = p.parse_intermixed_args(argv)
    variants, worst = a.variants or discover(a.base), 0
    if a.old_base and len(variants) != 1:
        print("error: --old-base applies to one variant at a time; name that variant", file=sys.stderr)
        return 2
    for v in variants:
        try:
            if a.command == "sync":
                worst = max(worst, sync(a.base, v, a.old_base))
                continue
            problems = check(a.base, v)
            print("\n".join(problems) or f"{os.path.basename(v)}: ok")
            worst = max(worst, 1 if problems else 0)
        except GuardError as e:
            print(f"error: {e}", file=sys.stderr)
            worst = 2
    return worst


if __name__ == "__main__":
    sys.exit(main())
