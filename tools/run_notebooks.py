"""Run every notebook's code cells, tests included, in a user's environment: the installed package, no nbdev.

Usage: python tools/run_notebooks.py [NOTEBOOK ...] [--layer torch|fastai] [--workers 2] [--timeout 900]

Run by tools/test_user_env.py with the python of a venv that holds the wheel and the test-only dependencies
(settings.ini `test_requirements`: hypothesis, timm, ipykernel, nbclient, ...) but not nbdev, which needs fastcore < 2.
Each notebook runs in a Jupyter kernel (nbclient) with its own folder as the working directory, as `nbdev_test` does.
What needs the nbdev toolchain is left out, and listed with the reason:
- a statement that imports nbdev, execnb or the docs renderer (`from nbdev.showdoc import *`); `show_doc` is replaced by
  a stand-in that evaluates its argument and draws nothing, so `show_doc(...)` calls still check the symbol exists;
- a cell that calls `nbdev_export()`;
- a cell that uses a name that only a left-out statement defined (say `get_config` from `nbdev.config`), and so on;
- as in `nbdev_test`: cells marked `#| eval: false`, cells with a flag of settings.ini `tst_flags` (`#| slow`), and
  notebooks whose front matter says `skip_exec: true`.
With --layer, only one layer's notebooks run, found from the imports of their code cells (`ast`), and the others are
listed with the reason:
- fastai: the notebooks that import fastai (or another package that only the `fastai` extra brings, `FASTAI_ONLY`), or
  a module of ours that does (`fastai_modules`: mixup_nbdev.mixup, .manifold, .guided_mixup, .data, .train);
- torch: all the others, which must run where the package was installed without its `fastai` extra (fastcore and
  matplotlib are there, as test requirements).
Exits 1 if a notebook fails; ends with "notebooks: N passed, N failed".
"""
import argparse, ast, configparser, json, os, re, sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEV_ONLY = ('nbdev', 'execnb', 'mixup_nbdev_docs')  # modules of the development toolchain
# what only the `fastai` extra brings: fastai, and dependencies of it that nothing else installed for the tests brings
# (fastcore, matplotlib and scikit-learn are test requirements too, so the torch layer's notebooks may use them)
FASTAI_ONLY = ('fastai', 'fasttransform', 'fastprogress', 'pandas', 'spacy')
STUBS = {'show_doc'}  # names a left-out import would define that the stand-in cell defines instead
STUB_CELL = '''import os, mixup_nbdev
os.environ['IN_TEST'] = '1'  # as nbdev_test sets it
assert 'site-packages' in mixup_nbdev.__file__, f'mixup_nbdev comes from {mixup_nbdev.__file__}, not from the installed wheel'
def show_doc(sym, *args, **kwargs):
    "Stand-in for nbdev's show_doc, which is not installed here: `sym` was evaluated, so it exists; nothing is drawn"
    assert sym is not None, 'show_doc(None)'
'''


def settings():
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT / 'settings.ini')
    return cfg['DEFAULT']


def notebooks():
    "The notebooks `nbdev_test` runs: those under nbs_path, skipping names and folders that start with `_` or `.`"
    nbs = ROOT / settings().get('nbs_path', 'nbs')
    return sorted(p for p in nbs.rglob('*.ipynb') if not any(part.startswith(('_', '.')) for part in p.relative_to(nbs).parts))


def imports(tree, package=None)->set:
    "The modules that the code `tree` imports anywhere (in functions too); relative imports resolved against `package`"
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import): out |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                if package is None: continue
                parts = package.split('.')
                mod = '.'.join(parts[:len(parts) - n.level + 1] + ([n.module] if n.module else []))
            else: mod = n.module
            out |= {mod} | {f'{mod}.{a.name}' for a in n.names if a.name != '*'}  # `from pkg import module` too
    return out


def fastai_modules()->dict:
    "The library's modules that need the `fastai` extra, as {module: what of it they import}, read from their sources here"
    lib = ROOT / settings()['lib_path']
    mods = {}
    for f in sorted(lib.rglob('*.py')):
        parts = f.relative_to(lib.parent).with_suffix('').parts
        name, package = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts), '.'.join(parts[:-1])
        mods[name] = imports(ast.parse(f.read_text(encoding='utf-8')), package)
    found, grew = {}, True
    while grew:  # a module that imports a module of the fastai layer is in it too
        grew = False
        for name, imp in mods.items():
            why = next((m for m in sorted(imp) if m.split('.')[0] in FASTAI_ONLY or m in found), None)
            if why and name not in found: found[name] = why; grew = True
    return found


def layer(nb_path, ours:dict)->tuple:
    "('fastai', why) if the notebook's code imports what needs the `fastai` extra (`ours`: `fastai_modules()`), else ('torch', '')"
    nb = json.loads(Path(nb_path).read_text())
    for i, c in enumerate(nb['cells']):
        if c['cell_type'] != 'code': continue
        code = '\n'.join('pass' if l.lstrip().startswith(('%', '!')) else l for l in ''.join(c['source']).splitlines())
        try: imp = imports(ast.parse(code))
        except SyntaxError: continue
        why = next((m for m in sorted(imp) if m.split('.')[0] in FASTAI_ONLY), None) or next((m for m in sorted(imp) if m in ours), None)
        if why: return 'fastai', f"cell {i} imports {why}" + (f", which imports {ours[why]}" if why in ours else '')
    return 'torch', ''


def directives(src):
    "nbdev's `#|` directives at the top of a cell, as {name: value}"
    out = {}
    for line in src.splitlines():
        if not line.startswith('#|'): break
        k, _, v = line[2:].strip().partition(' ')
        out[k.strip()] = v.strip()
    return out


def dev_import(node):
    "The dev-only module a statement imports, if any"
    if isinstance(node, ast.Import):
        return next((a.name for a in node.names if a.name.split('.')[0] in DEV_ONLY), None)
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split('.')[0] in DEV_ONLY: return node.module
    return None


def bound(node):
    "Names a statement binds at the top level of the notebook"
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split('.')[0] for a in node.names if a.name != '*'}
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): return {node.name}
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del))}


def used(node): return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def plan(nb_path, flags):
    "The cells to run (sources) and what was left out, with why: ([src], [(cell index, first line, reason)])"
    nb = json.loads(Path(nb_path).read_text())
    cells, skipped, tainted = [], [], {}
    front = next((''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown'), '')
    if re.search(r'^skip_exec:\s*true', front, re.M | re.I): return None, [(0, '', 'front matter skip_exec: true')]
    for i, c in enumerate(nb['cells']):
        if c['cell_type'] != 'code': continue
        src = ''.join(c['source'])
        if not src.strip(): continue
        first = next((l for l in src.splitlines() if not l.startswith('#|')), src.splitlines()[0])[:70]
        d = directives(src)
        why = ('#| eval: false, as nbdev_test' if d.get('eval:', '').lower() == 'false' else
               f"#| {sorted(flags & d.keys())[0]}, a flag nbdev_test skips (settings.ini tst_flags)" if flags & d.keys() else
               'exports with nbdev' if 'nbdev_export(' in src else None)
        if why: skipped.append((i, first, why)); continue
        code = '\n'.join('pass' if l.lstrip().startswith(('%', '!')) else l for l in src.splitlines())  # IPython magics
        try: tree = ast.parse(code)
        except SyntaxError: cells.append(src); continue
        lines, out = src.splitlines(), []
        keep = []
        for node in tree.body:
            mod = dev_import(node)
            if mod:
                for n in bound(node) - STUBS: tainted[n] = f'imported from {mod}'
                out.append(f"`{'; '.join(lines[node.lineno-1:node.end_lineno])}` ({mod} is a development tool)")
                continue
            need = sorted(used(node) & tainted.keys())
            if need:  # this statement, and so the rest of the cell, needs a left-out name
                reason = f"uses `{need[0]}`, {tainted[need[0]]}"
                for n in set().union(*(bound(m) for m in tree.body)): tainted.setdefault(n, f'defined by left-out cell {i}')
                keep = None; break
            keep.append(node)
        if keep is None: skipped.append((i, first, reason)); continue
        for o in out: skipped.append((i, first, f'left out {o}; the rest of the cell runs'))
        if out:
            drop = {l for node in tree.body if dev_import(node) for l in range(node.lineno, node.end_lineno + 1)}
            src = '\n'.join('pass' if n + 1 in drop else l for n, l in enumerate(lines))
        cells.append(src)
    return cells, skipped


def run(nb_path, timeout):
    "Run one notebook; returns (path, ok, seconds, skipped, error)"
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    t0 = time.time()
    flags = set(settings().get('tst_flags', '').split())
    cells, skipped = plan(nb_path, flags)
    if cells is None: return nb_path, True, 0., skipped, ''
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(STUB_CELL)] + [nbformat.v4.new_code_cell(s) for s in cells])
    client = NotebookClient(nb, timeout=timeout, kernel_name='python3', resources={'metadata': {'path': str(Path(nb_path).parent)}},
                            extra_arguments=['--IPKernelApp.log_level=ERROR'])  # not its warning that TCP is unencrypted
    try:
        client.execute()
        return nb_path, True, time.time() - t0, skipped, ''
    except CellExecutionError as e:
        return nb_path, False, time.time() - t0, skipped, re.sub(r'\x1b\[[0-9;]*m', '', str(e))[-4000:]  # no colours
    except Exception as e:  # a kernel that died or timed out
        return nb_path, False, time.time() - t0, skipped, f'{type(e).__name__}: {e}'[-4000:]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('notebooks', nargs='*', help='notebooks to run (default: all, as nbdev_test finds them)')
    ap.add_argument('--layer', choices=['torch', 'fastai'], help="only the notebooks that need no fastai ('torch') or those that do ('fastai')")
    ap.add_argument('--workers', type=int, default=2, help='notebooks run at once')
    ap.add_argument('--timeout', type=int, default=900, help='seconds one cell may take')
    a = ap.parse_args()
    for m in DEV_ONLY[:2]:
        try: __import__(m)
        except ImportError: continue
        sys.exit(f"{m} is installed in this environment ({sys.prefix}): this runner checks the notebooks without the "
                 f"development toolchain; run it with the python of a venv made by tools/test_user_env.py")
    nbs = [Path(p).resolve() for p in a.notebooks] or notebooks()
    if a.layer:
        ours = fastai_modules()
        layers = {p: layer(p, ours) for p in nbs}
        left = [p for p in nbs if layers[p][0] != a.layer]
        nbs = [p for p in nbs if layers[p][0] == a.layer]
        print(f"the {a.layer} layer: {len(nbs)} notebooks; left out {len(left)}, " +
              ("which import what needs the fastai extra (run them with --layer fastai):" if a.layer == 'torch' else
               "which need no fastai (run them with --layer torch):") + (f" {', '.join(p.name for p in left)}" if a.layer == 'fastai' else ''), flush=True)
        if a.layer == 'torch':
            for p in left: print(f"    {p.relative_to(ROOT)}: {layers[p][1]}")
    os.environ.setdefault('OMP_NUM_THREADS', '1')  # notebooks run side by side on few cores
    os.environ.setdefault('MPLBACKEND', 'Agg')
    failed, t0 = [], time.time()
    with ProcessPoolExecutor(a.workers) as ex:
        for path, ok, secs, skipped, err in ex.map(run, nbs, [a.timeout] * len(nbs)):
            rel = path.relative_to(ROOT)
            print(f"{'PASS' if ok else 'FAIL'}: {rel} ({secs:.0f}s)", flush=True)
            for i, first, why in skipped: print(f"    skipped cell {i} [{first}]: {why}")
            if not ok: failed.append(rel); print('    ' + err.replace('\n', '\n    '))
    print(f"ran {len(nbs)} notebooks in {time.time() - t0:.0f}s")
    print(f"notebooks: {len(nbs) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == '__main__': sys.exit(main())
