#!/usr/bin/env python3
"""Move the flat modules of mlenergy/diffusion/ into sub-packages that name the jobs (issue 25),
one folder per commit.

    python scripts/dev/relayout.py              # at the root of a clean checkout: commits
    python scripts/dev/relayout.py --no-commit  # the same moves and rewrites, uncommitted

For every folder it runs `git mv`, rewrites every reference to the moved modules (import
statements, dotted names in strings and prose such as `python -m mlenergy.diffusion.x`, file
paths such as `mlenergy/diffusion/x.py`, in mlenergy/, tests/, scripts/, docs, pyproject.toml
and .ci/), corrects path arithmetic on `__file__` in the moved modules, and commits.

It reads module names and import statements only, never line numbers or other contents, so that
it still applies after the modules' contents change. When the package's flat modules are not
the ones the table below names (one missing, or a new one), it stops before touching anything
and lists them: add them to FOLDERS and run it again.

The layer order of the folders is tests/test_layout.py's LAYERS; ARCHITECTURE.md explains it.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = "mlenergy.diffusion"
PACKAGE_DIR = Path("mlenergy/diffusion")
# What stays at the package root: the package itself and the two entry points users type
# (`torchrun ... mlenergy/diffusion/benchmark.py`, `python -m mlenergy.diffusion.benchmark`,
# `mlenergy-diffusion` = cli:main).
ROOT_MODULES = {"__init__", "benchmark", "cli"}

# Folders in commit order, each with what it holds (its __init__ docstring and the README line)
# and its modules: old dotted name under mlenergy.diffusion -> new base name. Commit order is not
# layer order: `output/` comes before `results/` so that the writer `results.py` is renamed
# before a `results/` package appears beside it; `sweep/` comes first so that its `process.py`
# is renamed before the `process/` package exists.
FOLDERS: list[tuple[str, str, dict[str, str]]] = [
    ("sweep", "A grid of benchmark points, run here or as Slurm job arrays, surviving the "
     "points that fail. Nothing below imports it; the benchmark does not either.", {
         "presets": "presets",
         "sweep.cli": "command_line",        # cli.py is the mlenergy-diffusion command
         "sweep.task": "slurm_task",         # task.py is image or video
         "sweep.process": "process_tree",    # process/ is this process's package
     }),
    ("output", "What a run leaves behind: its typed record, the numbers derived from it, "
     "results.json written, the summary table, the power plot, the run directory and its lock, "
     "model_info.json, and the facts of the run (environment, provenance, startup).", {
         "record": "record",
         "analysis": "analysis",
         "summary": "summary",
         "results": "results_writer",        # results/ is the package that reads it back
         "power_plot": "power_plot",
         "startup": "startup",
         "environment": "environment",
         "provenance": "provenance",
         "describe": "describe",
         "model_info": "model_info",
         "rundir": "rundir",
         "runlock": "runlock",
         "sweep.sharing": "node_sharing",    # the run reads it; the benchmark imports no sweep/
     }),
    ("inputs", "What the user typed, read strictly: the command-line dataclasses, one-line "
     "refusals, image or video. No torch.", {
         "config": "config",
         "argcheck": "argcheck",
         "task": "task",
     }),
    ("process", "This process: how it was launched, its process group and failure rules, dying "
     "with its launcher, the collective watchdog, the console, xDiT imported without CUDA, the "
     "test hooks.", {
         "launch": "launch",
         "runtime": "runtime",
         "lifeline": "lifeline",
         "watchdog": "watchdog",
         "console": "console",
         "xfuser_compat": "xfuser_compat",
         "testing": "testing",
     }),
    ("results", "results.json and a run directory's files as data: file names and atomic writes, "
     "the one reader of results.json and its typed sections, statistics, and outputs compared "
     "with a reference run. Nothing from the run itself.", {
         "files": "files",
         "stats": "stats",
         "sections": "sections",
         "results_reader": "results_reader",
         "results_sections": "results_sections",
         "quality": "quality",
     }),
    ("models", "The models: the registry and the published component configs, pipeline "
     "families, what the user typed resolved to a model, the Hugging Face cache, and building "
     "the diffusers pipeline.", {
         "registry": "registry",
         "published": "published",
         "families": "families",
         "video_families": "video_families",
         "family_spec": "family_spec",
         "hub": "hub",
         "resolve": "resolve",
         "pipelines": "pipelines",
     }),
    ("kernels", "What a denoiser's layers compute with, and whether this machine has it: "
     "attention kernels (FlashAttention-3) and FP8 linear layers.", {
         "attention": "attention",
         "quantize": "quantize",
     }),
    ("planning", "Every default decided and every input checked before anything loads: the run "
     "plan, performance options, limits, prompts, and the points one process measures.", {
         "plan": "plan",
         "run_plan": "run_plan",
         "options": "options",
         "limits": "limits",
         "prompts": "prompts",
         "prompt_datasets": "prompt_datasets",
         "group": "shared_pipeline",         # sweep/groups.py is the sweep's grouping
     }),
    ("engine", "The plan applied to a built pipeline: xDiT's engine and its calls, and the "
     "performance options put in place on every rank.", {
         "xdit": "xdit",
         "options_apply": "options_apply",
     }),
    ("profiling", "Research: where a GPU's denoising time and energy go while it waits "
     "(torch.profiler, communication and idle shares).", {
         "waiting": "waiting",
         "step_profile": "step_profile",
     }),
    ("tools", "Tools over finished runs: the report (tables and plots) and the run checker.", {
        "report": "report",
        "report_plots": "report_plots",
        "checks": "check_runs",              # probes/checks.py checks a measurement
    }),
]

# Modules other branches add or remove while this script waits to be applied: absent is fine.
IN_FLIGHT = {"power_plot", "sections", "results_sections"}

# Functions that move before the folders do: (old module, function, new module). The tools'
# `main`s imported this one from the cli entry point, an upward edge from every tool.
FUNCTION_MOVES = [("cli", "exit_quietly_on_broken_pipe", "console")]

# Folders already there whose role the README's layout names.
EXISTING_FOLDERS = {
    "probes": "Everything that watches a run: energy windows, power and temperature, GPU "
              "exclusivity and the self-checks, stage and step records, FLOPs, memory, "
              "compilation; each probe reaches the devices through gpus.py (fake.py in tests).",
}

# Files written for the new layout already; rewriting them would rewrite correct names.
NOT_REWRITTEN = {"scripts/dev/relayout.py", "ARCHITECTURE.md"}
TEXT_SUFFIXES = {".py", ".md", ".sh", ".toml", ".cfg", ".ini", ".yaml", ".yml", ".txt"}
MAX_LINE = 99


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-commit", action="store_true",
                        help="move and rewrite without committing (for trying)")
    args = parser.parse_args()
    if not PACKAGE_DIR.is_dir():
        sys.exit(f"run this at the repository root ({PACKAGE_DIR} is not here)")
    if not args.no_commit and git("status", "--porcelain", "--untracked-files=no").strip():
        sys.exit("the checkout has uncommitted changes: commit or stash them first "
                 "(or try with --no-commit)")
    check_table_matches_package()
    move_functions(commit=not args.no_commit)
    for folder, role, modules in FOLDERS:
        moves = {old: f"{folder}.{new}" for old, new in modules.items()
                 if module_path(old).exists()}
        move_folder(folder, role, moves, commit=not args.no_commit)
    rewrite_readme_layout(commit=not args.no_commit)
    return report_leftovers()


# ----------------------------------------------------------------------------- the table

def check_table_matches_package() -> None:
    """Stop, touching nothing, unless every flat module is in the table and every module the
    table expects is there (in-flight ones aside)."""
    flat = {p.stem for p in PACKAGE_DIR.glob("*.py")} - ROOT_MODULES
    flat |= {f"sweep.{p.stem}" for p in (PACKAGE_DIR / "sweep").glob("*.py")}
    table = {old for _, _, modules in FOLDERS for old in modules}
    unplaced = sorted(m for m in flat - table if not m.startswith("sweep."))
    missing = sorted(m for m in table - flat if m not in IN_FLIGHT)
    clashing = sorted(folder for folder, _, _ in FOLDERS
                      if (PACKAGE_DIR / folder).exists() and folder != "sweep")
    problems = []
    if unplaced:
        problems.append("modules at the package root that FOLDERS does not place: "
                        + ", ".join(f"{m}.py" for m in unplaced))
    if missing:
        problems.append("modules FOLDERS expects that are not there: "
                        + ", ".join(module_path(m).as_posix() for m in missing))
    if clashing:
        problems.append("folders already there (has it run before?): " + ", ".join(clashing))
    if problems:
        sys.exit("relayout: the package is not the one the table describes; nothing was "
                 "changed.\n  " + "\n  ".join(problems)
                 + "\nAdd them to FOLDERS (or IN_FLIGHT) in scripts/dev/relayout.py.")


def module_path(dotted: str) -> Path:
    return PACKAGE_DIR.joinpath(*dotted.split(".")).with_suffix(".py")


# ----------------------------------------------------------------------------- moving

def move_folder(folder: str, role: str, moves: dict[str, str], commit: bool) -> None:
    target = PACKAGE_DIR / folder
    if not (target / "__init__.py").exists():
        target.mkdir(exist_ok=True)
        (target / "__init__.py").write_text(f'"""{wrap_docstring(role)}"""\n')
        git("add", str(target / "__init__.py"))
    for old, new in moves.items():
        source, destination = module_path(old), module_path(new)
        git("mv", str(source), str(destination))
        fix_file_paths(destination, depth_change=len(new.split(".")) - len(old.split(".")))
    rewrite_references(moves)
    renamed = [f"{old.replace('.', '/')}.py -> {new.replace('.', '/')}.py"
               for old, new in moves.items() if old.split(".")[-1] != new.split(".")[-1]]
    message = f"Layout: {folder}/ ({', '.join(m.split('.')[-1] for m in moves.values())})"
    body = role + ("\n\nRenamed: " + "; ".join(renamed) + "." if renamed else "")
    done(message, body, commit)
    print(f"{folder}/: {len(moves)} modules" + (f" ({'; '.join(renamed)})" if renamed else ""))


def wrap_docstring(text: str, width: int = 96) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])


def done(message: str, body: str, commit: bool) -> None:
    if commit:
        git("add", "-A", ".")
        git("commit", "-q", "-m", message, "-m", body)


def git(*args: str) -> str:
    result = subprocess.run(["git", *args], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"git {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


# ----------------------------------------------------------------------------- __file__

# Path arithmetic on __file__ counts folders: one folder deeper, one more step up.
PARENTS_INDEX = re.compile(r"(Path\(__file__\)(?:\.resolve\(\))?\.parents\[)(\d+)(\])")
PARENT_CHAIN = re.compile(r"(Path\(__file__\)(?:\.resolve\(\))?)((?:\.parent(?![\w\[]))+)")
DIRNAME_CHAIN = re.compile(
    r"((?:os\.path\.dirname\()+)((?:os\.path\.(?:abspath|realpath)\()?__file__\)?)(\)+)")


def fix_file_paths(path: Path, depth_change: int) -> None:
    if depth_change == 0:
        return
    source = path.read_text()
    fixed = PARENTS_INDEX.sub(lambda m: f"{m[1]}{int(m[2]) + depth_change}{m[3]}", source)
    fixed = PARENT_CHAIN.sub(lambda m: m[1] + m[2] + ".parent" * depth_change, fixed)
    fixed = DIRNAME_CHAIN.sub(
        lambda m: "os.path.dirname(" * depth_change + m[1] + m[2] + m[3] + ")" * depth_change,
        fixed)
    if fixed != source:
        path.write_text(fixed)
        print(f"  {path}: path arithmetic on __file__ now climbs {depth_change} more folder(s)")
    # What the patterns above do not recognise is shown to the operator, never guessed at.
    for number, line in enumerate(fixed.splitlines(), 1):
        if ("__file__" in line or "__package__" in line) and not (
                PARENTS_INDEX.search(line) or PARENT_CHAIN.search(line)
                or DIRNAME_CHAIN.search(line)):
            print(f"  check by hand: {path}:{number}: {line.strip()}")


# ----------------------------------------------------------------------------- references

def rewrite_references(moves: dict[str, str], functions: dict[tuple[str, str], str] = {}
                       ) -> None:
    text_rules = text_rewrites(moves)
    for path in tracked_text_files():
        source = path.read_text()
        rewritten = source
        if path.suffix == ".py":
            rewritten = rewrite_imports(rewritten, moves, functions, path)
        for pattern, replacement in text_rules:
            rewritten = pattern.sub(replacement, rewritten)
        if rewritten != source:
            path.write_text(rewritten)


def tracked_text_files() -> list[Path]:
    files = []
    for name in git("ls-files").splitlines():
        path = Path(name)
        if name in NOT_REWRITTEN or name.startswith("docs/data/") or not path.is_file():
            continue
        if path.suffix in TEXT_SUFFIXES or name.startswith(".ci/") or (
                name.startswith("scripts/") and not path.suffix):
            files.append(path)
    return files


def text_rewrites(moves: dict[str, str]) -> list[tuple[re.Pattern, str]]:
    """Dotted names (`python -m mlenergy.diffusion.x`, mock targets, prose), file paths
    (`mlenergy/diffusion/x.py`, `sweep/x.py`), and bare file names of renamed modules where the
    old name was unique in the package."""
    if not moves:
        return []
    rules = []
    longest_first = sorted(moves, key=len, reverse=True)
    dotted = "|".join(re.escape(old) for old in longest_first)
    rules.append((re.compile(rf"(?<![\w.]){re.escape(PACKAGE)}\.({dotted})(?!\w)"),
                  lambda m: f"{PACKAGE}.{moves[m[1]]}"))
    slashed = {old.replace(".", "/"): new.replace(".", "/") for old, new in moves.items()}
    alternatives = "|".join(re.escape(old) for old in sorted(slashed, key=len, reverse=True))
    rules.append((re.compile(rf"(?<![\w/])mlenergy/diffusion/({alternatives})\.py\b"),
                  lambda m: f"mlenergy/diffusion/{slashed[m[1]]}.py"))
    in_folders = [old for old in slashed if "/" in old]
    if in_folders:
        rules.append((re.compile(rf"(?<![\w/])({'|'.join(map(re.escape, in_folders))})\.py\b"),
                      lambda m: f"{slashed[m[1]]}.py"))
    base_names = [p.stem for p in PACKAGE_DIR.rglob("*.py")]
    for old, new in moves.items():
        old_base, new_base = old.split(".")[-1], new.split(".")[-1]
        if old_base != new_base and base_names.count(new_base) == 1 and \
                base_names.count(old_base) == 0:
            rules.append((re.compile(rf"(?<![\w/.-]){re.escape(old_base)}\.py\b"),
                          f"{new_base}.py"))
    return rules


def rewrite_imports(source: str, moves: dict[str, str],
                    functions: dict[tuple[str, str], str], path: Path) -> str:
    """Every import of a moved module (or a moved function) rewritten in place; the names the
    importing code binds stay the same (`from pkg.folder import new as old` for a renamed
    module), so no other line of the importer changes."""
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        print(f"  not parsed, imports left as they are: {path}: {error}")
        return source
    edits = []
    for node in ast.walk(tree):
        statements = None
        if isinstance(node, ast.ImportFrom) and node.level == 0 and \
                (node.module or "").split(".")[:2] == PACKAGE.split("."):
            statements = rewrite_from(node, moves, functions)
        elif isinstance(node, ast.Import):
            statements = rewrite_import(node, moves)
        if statements is not None:
            edits.append((node, statements))
    lines = source.splitlines(keepends=True)
    for node, statements in sorted(edits, key=lambda e: (e[0].lineno, e[0].col_offset),
                                   reverse=True):
        first, last = lines[node.lineno - 1], lines[node.end_lineno - 1]
        before, after = first[:node.col_offset], last[node.end_col_offset:]
        # An import that shares its line with other code (`if x: from a import b`) stays on it.
        alone = not before.strip()
        comment = after.strip() if after.strip().startswith("#") else ""
        if alone and comment and len(statements) > 1:
            # `# noqa: E402` and its kind hold for each of the statements the import became.
            statements = [with_comment(s, comment) for s in statements[:-1]] + statements[-1:]
        text = ("\n" + before).join(statements) if alone else "; ".join(statements)
        lines[node.lineno - 1:node.end_lineno] = [before + text + after]
    return sort_import_runs("".join(lines)) if edits else source


def sort_import_runs(source: str) -> str:
    """Consecutive `from mlenergy.diffusion... import` lines, which the moves split and scatter,
    sorted by module and merged per module, as isort would leave them."""
    tree = ast.parse(source)
    runs = []
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            run = []
            for statement in getattr(node, field, []) if isinstance(
                    getattr(node, field, None), list) else []:
                ours = isinstance(statement, ast.ImportFrom) and statement.level == 0 and \
                    (statement.module or "").startswith(PACKAGE)
                if ours and (not run or statement.lineno == run[-1].end_lineno + 1):
                    run.append(statement)
                    continue
                if len(run) > 1:
                    runs.append(run)
                run = [statement] if ours else []
            if len(run) > 1:
                runs.append(run)
    lines = source.splitlines(keepends=True)
    for run in sorted(runs, key=lambda r: r[0].lineno, reverse=True):
        first = lines[run[0].lineno - 1]
        comments = {lines[st.end_lineno - 1][st.end_col_offset:].strip() for st in run}
        if first[:run[0].col_offset].strip() or len(comments) > 1 or not (
                comments <= {""} or next(iter(comments)).startswith("#")):
            # Shares a line with other code, or different comments on the lines (which one
            # belongs where is not ours to say): left as it is.
            continue
        comment = comments.pop()
        merged: dict[str, list[tuple[str, str | None]]] = {}
        for statement in run:
            names = merged.setdefault(statement.module, [])
            names += [(a.name, a.asname) for a in statement.names
                      if (a.name, a.asname) not in names]
        indent = run[0].col_offset
        text = "".join(" " * indent + with_comment(from_statement(module, sorted(names), indent),
                                                   comment) + "\n"
                       for module, names in sorted(merged.items()))
        lines[run[0].lineno - 1:run[-1].end_lineno] = [text]
    return "".join(lines)


def with_comment(statement: str, comment: str) -> str:
    """A trailing comment on the statement's first line, where linters read it."""
    if not comment:
        return statement
    first, newline, rest = statement.partition("\n")
    return f"{first}  {comment}{newline}{rest}"


def relative(module: str) -> str:
    return module[len(PACKAGE) + 1:] if module != PACKAGE else ""


def rewrite_from(node: ast.ImportFrom, moves: dict[str, str],
                 functions: dict[tuple[str, str], str]) -> list[str] | None:
    here = relative(node.module)
    if here in moves:
        return [from_statement(f"{PACKAGE}.{moves[here]}",
                               [(a.name, a.asname) for a in node.names], node.col_offset)]
    groups: dict[str, list[tuple[str, str | None]]] = {}
    changed = False
    for alias in node.names:
        full = f"{here}.{alias.name}" if here else alias.name
        if full in moves:
            parent, _, base = f"{PACKAGE}.{moves[full]}".rpartition(".")
            bound = alias.asname or alias.name
            groups.setdefault(parent, []).append((base, bound if bound != base else None))
            changed = True
        elif (here, alias.name) in functions:
            groups.setdefault(f"{PACKAGE}.{functions[here, alias.name]}", []).append(
                (alias.name, alias.asname))
            changed = True
        else:
            groups.setdefault(node.module, []).append((alias.name, alias.asname))
    if not changed:
        return None
    return [from_statement(module, names, node.col_offset) for module, names in groups.items()]


def rewrite_import(node: ast.Import, moves: dict[str, str]) -> list[str] | None:
    names, changed = [], False
    for alias in node.names:
        name = alias.name
        if name.startswith(PACKAGE + ".") and relative(name) in moves:
            name, changed = f"{PACKAGE}.{moves[relative(name)]}", True
        names.append(name + (f" as {alias.asname}" if alias.asname else ""))
    return ["import " + ", ".join(names)] if changed else None


def from_statement(module: str, names: list[tuple[str, str | None]], indent: int) -> str:
    parts = [name + (f" as {asname}" if asname else "") for name, asname in names]
    one_line = f"from {module} import {', '.join(parts)}"
    if indent + len(one_line) <= MAX_LINE:
        return one_line
    pad = " " * (indent + 4)
    rows, row = [], []
    for part in parts:
        if row and len(pad) + len(", ".join(row + [part]) + ",") > MAX_LINE:
            rows.append(", ".join(row) + ",")
            row = []
        row.append(part)
    rows.append(", ".join(row) + ",")
    return f"from {module} import (\n" + "".join(pad + r + "\n" for r in rows) + " " * indent + ")"


# ----------------------------------------------------------------------------- functions

def move_functions(commit: bool) -> None:
    for old, name, new in FUNCTION_MOVES:
        source_path, target_path = module_path(old), module_path(new)
        source = source_path.read_text()
        function = next((n for n in ast.parse(source).body
                         if isinstance(n, ast.FunctionDef) and n.name == name), None)
        if function is None:
            if f"def {name}(" in target_path.read_text():
                continue  # moved already
            sys.exit(f"relayout: {source_path} no longer defines {name}; update FUNCTION_MOVES")
        lines = source.splitlines(keepends=True)
        start = min([function.lineno] + [d.lineno for d in function.decorator_list]) - 1
        body = "".join(lines[start:function.end_lineno])
        del lines[start:function.end_lineno]
        remaining = re.sub(r"\n{3,}(?=\S)", "\n\n\n", "".join(lines))
        target = target_path.read_text().rstrip("\n") + "\n\n\n" + body
        target = add_missing_imports(target, needed_modules(function))
        target_path.write_text(target)
        # The old home still calls it: import it from the new one.
        if re.search(rf"\b{name}\b", remaining):
            remaining = add_import_line(remaining, f"from {PACKAGE}.{new} import {name}")
        source_path.write_text(remaining)
        rewrite_references({}, {(old, name): new})
        done(f"{name} moves from {old}.py to {new}.py",
             f"The tools imported it from the {old} entry point; now they import it from "
             f"{new}.py, below them.", commit)
        print(f"{old}.{name} -> {new}.{name}")


def needed_modules(function: ast.FunctionDef) -> set[str]:
    """Standard-library modules the function names (`os.dup2` -> os)."""
    return {n.value.id for n in ast.walk(function)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
            and n.value.id in sys.stdlib_module_names}


def add_missing_imports(source: str, modules: set[str]) -> str:
    imported = {a.asname or a.name for n in ast.parse(source).body if isinstance(n, ast.Import)
                for a in n.names}
    for module in sorted(modules - imported):
        source = add_import_line(source, f"import {module}")
    return source


def add_import_line(source: str, statement: str) -> str:
    """After the module's last top-level import (its header), where a reader looks for it."""
    tree = ast.parse(source)
    last = max((n.end_lineno for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))),
               default=0)
    lines = source.splitlines(keepends=True)
    lines.insert(last, statement + "\n")
    return "".join(lines)


# ----------------------------------------------------------------------------- README, checks

def rewrite_readme_layout(commit: bool) -> None:
    """The README's Layout section becomes the folders in layer order, each with its modules, as
    the tree now is; ARCHITECTURE.md says what flows between them."""
    readme = Path("README.md")
    text = readme.read_text()
    match = re.search(r"^## Layout\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
    if match is None:
        print("README.md has no '## Layout' section: left as it is")
        return
    roles = {folder: role for folder, role, _ in FOLDERS} | EXISTING_FOLDERS
    order = layer_order() or list(roles)
    lines = ["## Layout", ""] + wrap_docstring(
        "`mlenergy/diffusion/` holds two entry points, `benchmark.py` (the story of a run: "
        "`torchrun ... mlenergy/diffusion/benchmark.py`, `python -m mlenergy.diffusion.benchmark`)"
        " and `cli.py` (the `mlenergy-diffusion` command), and one folder per job, lowest layer "
        "first: a folder imports only from the folders before it in this list "
        "(`tests/test_layout.py`). `ARCHITECTURE.md` says what flows between them and where to "
        "add a model family, an option, a probe or a sweep backend.").split("\n") + [""]
    for folder in order:
        modules = sorted(p.name for p in (PACKAGE_DIR / folder).glob("*.py")
                         if p.stem not in ("__init__", "__main__"))
        if modules:
            item = wrap_docstring(f"- `{folder}/` (" + ", ".join(f"`{m}`" for m in modules)
                                  + f"): {roles.get(folder, '')}", width=98)
            lines += item.replace("\n", "\n  ").split("\n")
    lines += ["", "`scripts/`: test, smoke, sweep and GPU run scripts (`scripts/dev/`: "
              "maintenance). `tests/`. `run/`: outputs", "(not committed).", "", ""]
    readme.write_text(text[:match.start()] + "\n".join(lines) + text[match.end():])
    done("README: the layout by folder, in layer order",
         "Generated by scripts/dev/relayout.py from the tree.", commit)


def layer_order() -> list[str]:
    """tests/test_layout.py's LAYERS, so that the README lists the folders in the order the
    test enforces."""
    test = Path("tests/test_layout.py")
    if not test.exists():
        return []
    for node in ast.parse(test.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "LAYERS"
                                                for t in node.targets):
            return list(ast.literal_eval(node.value))
    return []


def report_leftovers() -> int:
    """What a person should look at: references under mlenergy.diffusion that name no module
    now (stale), and bare file names that meant two modules before the move (`checks.py`,
    `cli.py`, `task.py`), which were not rewritten."""
    reference = re.compile(r"mlenergy[./]diffusion[./]([A-Za-z_]\w*)(?:[./]([A-Za-z_]\w*))?")
    bare = re.compile(r"(?<![\w/.-])(checks|cli|task)\.py\b")
    stale, mentions = [], []
    for path in tracked_text_files():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if any(not resolves(m[1], m[2]) for m in reference.finditer(line)):
                stale.append(f"{path}:{number}: {line.strip()}")
            if path.suffix in (".md", ".py") and bare.search(line):
                mentions.append(f"{path}:{number}: {line.strip()}")
    if mentions:
        print("\nBare names that meant two modules before the move: read each one; most mean "
              "the module that kept the name.\n  " + "\n  ".join(mentions))
    if stale:
        print("\nSTALE references, naming no module (fix by hand):\n  " + "\n  ".join(stale))
    else:
        print("\nNo reference under mlenergy.diffusion names a module that is not there.")
    return 1 if stale else 0


def resolves(first: str, second: str | None) -> bool:
    """`mlenergy.diffusion.first[.second]` names a module, a package and one of its modules,
    or something the package's __init__ defines (`sweep.main`)."""
    base = PACKAGE_DIR / first
    if first.startswith("__") or first == "data" or base.with_suffix(".py").exists():
        return True
    if not base.is_dir():
        return False
    if second is None or second == "py" or (base / f"{second}.py").exists() \
            or (base / second).is_dir():
        return True
    defined = set()
    for node in ast.parse((base / "__init__.py").read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return second in defined


if __name__ == "__main__":
    sys.exit(main())
