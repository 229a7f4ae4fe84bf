"""The public API, as recorded in tools/api.json: every name in the `__all__` of `mixup_nbdev.functional`,
`.compat.timm`, `.compat.torchvision`, `.mixup`, `.manifold`, `.guided_mixup`, `.data` and `.train` is still in it and
importable from the same module, as the same kind of object.

Usage: python tools/test_api.py           check the package against tools/api.json (exit 1 on an incompatible change)
       python tools/test_api.py --write   record the current API in tools/api.json

For functions and classes (the class's own signature, `inspect.signature(cls)`), the recorded parameters must be the
first ones, in the same order, with the same kinds and defaults (default reprs with ` at 0x...` addresses removed); a
new parameter may only come after them, and must have a default (or be `*args` / `**kwargs`). A class must keep its
recorded public attributes (its `dir()` without the `_` names), and a NamedTuple exactly its fields (`Mixed`: five).
New names, and new attributes of a class, are allowed.

Regenerate with --write only when a change of the API is intended, and say so in CHANGELOG.md.
"""
import argparse, importlib, inspect, json, re, sys, warnings
from pathlib import Path

API = Path(__file__).with_name('api.json')
MODULES = ('mixup_nbdev.functional', 'mixup_nbdev.compat.timm', 'mixup_nbdev.compat.torchvision', 'mixup_nbdev.mixup',
           'mixup_nbdev.manifold', 'mixup_nbdev.guided_mixup', 'mixup_nbdev.data', 'mixup_nbdev.train')
VAR = ('VAR_POSITIONAL', 'VAR_KEYWORD')

def params(o):
    "`o`'s parameters as [name, kind, repr of the default or None], or None if it has no signature"
    try: sig = inspect.signature(o)
    except (TypeError, ValueError): return None
    norm = lambda v: re.sub(r' at 0x[0-9a-fA-F]+>', '>', repr(v))
    return [[p.name, p.kind.name, None if p.default is p.empty else norm(p.default)] for p in sig.parameters.values()]

def describe(o)->dict:
    "What is recorded of a public object"
    if inspect.isclass(o):
        d = dict(kind='class', params=params(o), attrs=sorted(n for n in dir(o) if not n.startswith('_')))
        if issubclass(o, tuple) and hasattr(o, '_fields'): d['fields'] = list(o._fields)
        return d
    if callable(o): return dict(kind='function', params=params(o))
    return dict(kind='other')

def current()->dict:
    "The API of `MODULES` as it is now"
    return {name: dict(all=list(m.__all__), names={n: describe(getattr(m, n)) for n in m.__all__})
            for name, m in ((name, importlib.import_module(name)) for name in MODULES)}

def check_params(rec, cur)->list:
    "What makes the current parameters `cur` incompatible with the recorded `rec`"
    if rec is None: return []
    if cur is None: return ['no signature now']
    fmt = lambda p: f"{p[0]} ({p[1]}{'' if p[2] is None else ', default ' + p[2]})"
    res = [f"parameter {i}: {fmt(r)} recorded, {fmt(cur[i]) if i < len(cur) else 'none'} now"
           for i, r in enumerate(rec) if i >= len(cur) or cur[i] != r]
    res += [f"new parameter {fmt(p)} has no default" for p in cur[len(rec):] if p[1] not in VAR and p[2] is None]
    return res

def check(rec:dict)->list:
    "Every incompatibility of the modules as they are now with the recorded API `rec`, one line each"
    problems = []
    for mod, r in rec.items():
        m = importlib.import_module(mod)
        for name, d in r['names'].items():
            where = f"{mod}.{name}"
            if name not in m.__all__: problems.append(f"{where}: no longer in __all__")
            if not hasattr(m, name): problems.append(f"{where}: no longer importable"); continue
            n = describe(getattr(m, name))
            if n['kind'] != d['kind']: problems.append(f"{where}: kind {d['kind']} recorded, {n['kind']} now"); continue
            problems += [f"{where}: {p}" for p in check_params(d.get('params'), n.get('params'))]
            problems += [f"{where}: attribute {a} is gone" for a in d.get('attrs', []) if a not in n['attrs']]
            if d.get('fields') != n.get('fields'): problems.append(f"{where}: fields {d.get('fields')} recorded, {n.get('fields')} now")
    return problems

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--write', action='store_true', help='record the current API in tools/api.json')
    args = ap.parse_args()
    warnings.simplefilter('ignore')  # what importing fastai and torch warns about is not the API
    if args.write:
        cur = current()
        text = json.dumps(cur, indent=1)  # then one line per parameter
        text = re.sub(r'\[\s*("[^"]*"),\s*("[A-Z_]+"),\s*(null|"(?:[^"\\]|\\.)*")\s*\]', r'[\1, \2, \3]', text)
        assert json.loads(text) == cur
        API.write_text(text + '\n')
        print(f"api: wrote {sum(len(m['names']) for m in cur.values())} names of {len(cur)} modules to {API}")
        return 0
    rec = json.loads(API.read_text())
    problems = [f"{m}: recorded, but not checked (add it to MODULES)" for m in rec if m not in MODULES]
    problems += check({m: r for m, r in rec.items() if m in MODULES})
    for p in problems: print(f"FAIL {p}")
    if problems:
        print(f"api: {len(problems)} incompatible changes against {API.name}")
        return 1
    print(f"api: {sum(len(m['names']) for m in rec.values())} names of {len(rec)} modules as recorded")
    return 0

if __name__ == '__main__': sys.exit(main())
