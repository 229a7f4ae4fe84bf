"""Install the package as a user does, into fresh environments, and test it there: no nbdev, no development pins.

Usage: python tools/test_user_env.py [build|newest|oldest ...]   (default: all three, in that order)

- build:  `python -m build` makes the sdist and, from it, the wheel in dist/; `twine check --strict` checks both, the
          wheel's requirements hold no exact pin, and CHANGELOG.md describes settings.ini's version.
- newest: a fresh venv gets the newest fastai, fastcore, torch and torchvision that pip can install here, then the
          wheel; fails if installing the wheel changed any of their versions (the package must fit into the
          environment a user trains in, not replace it).
- oldest: a fresh venv gets exactly the lower bounds of settings.ini `requirements` (`>=` read as `==`; a requirement
          that only caps a version is installed as it is), then the wheel; fails if the wheel changed any of them.
In both: every module of the wheel imports; importing mixup_nbdev.mixup prints nothing (beyond what importing
fastai.basics, which it builds on, prints); `__version__` is settings.ini's
version; without scikit-image the example datasets say how to install it (the `examples` extra). Then the `examples`
extra and settings.ini `test_requirements` are added (with the versions above held), every notebook runs with
tools/run_notebooks.py (nbclient, no nbdev), and `mixup_nbdev_train --epochs 1` trains.
Run by tools/test.sh in the development venv (which has build and twine). The venvs are made in _artifacts/user_env/
and removed after a pass (kept after a failure, to look into). pip keeps what it downloads in its cache, so a rerun
installs from disk. Exits 1 on any failure, with what failed and how to fix it.
"""
import argparse, configparser, json, os, re, shutil, subprocess, sys, tempfile, time, venv
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DIST, ENVS = ROOT / 'dist', ROOT / '_artifacts' / 'user_env'
HELD = ['fastai', 'fastcore', 'torch', 'torchvision']  # what a user's training environment already has
SHOWN = HELD + ['fasttransform', 'plum-dispatch', 'numpy', 'matplotlib', 'scikit-learn', 'scikit-image', 'pandas']
MUST_IMPORT_QUIETLY = 'mixup_nbdev.mixup'
EXAMPLES_HINT = 'pip install "mixup_nbdev[examples]"'


class Failed(Exception): pass


def cfg():
    c = configparser.ConfigParser(delimiters=['=']); c.read(ROOT / 'settings.ini')
    return c['DEFAULT']


def reqs(key): return [Requirement(r) for r in cfg().get(key, '').split()]


def lower_bounds(key):
    "`name==version` for each requirement of `key`, from its `>=` bound; a requirement that only caps is kept as it is"
    out = []
    for r in reqs(key):
        low = [s.version for s in r.specifier if s.operator == '>=']
        if not low and r.specifier: out.append(str(r)); continue  # a cap for a named incompatibility (see settings.ini)
        if not low: raise Failed(f"settings.ini {key}: `{r}` has no lower bound; give it `>=` the oldest version you support, "
                                 "so that the oldest environment can install and test exactly that")
        out.append(f'{r.name}=={low[0]}')
    return out


def sh(cmd, log, cwd=None, env=None):
    "Run `cmd`, appending its output to `log`; raise Failed with the output's tail if it fails"
    with open(log, 'a') as f:
        f.write(f'\n$ {" ".join(map(str, cmd))}\n'); f.flush()
        r = subprocess.run(list(map(str, cmd)), cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, text=True)
    if r.returncode:
        tail = ''.join(Path(log).read_text().splitlines(True)[-40:])
        raise Failed(f"`{' '.join(map(str, cmd))}` failed (exit {r.returncode}); the end of {log.relative_to(ROOT)}:\n{tail}")


class Step:
    "Print a step's name, then its time"
    times = []
    def __init__(self, name): self.name = name
    def __enter__(self): self.t0 = time.time(); print(f'  {self.name} ...', flush=True); return self
    def __exit__(self, *exc):
        dt = time.time() - self.t0; Step.times.append((self.name, dt))
        print(f'  {self.name}: {dt:.0f}s{" (failed)" if exc[0] else ""}', flush=True)


def wheel():
    whl = sorted(DIST.glob(f"{cfg()['lib_name']}-{cfg()['version']}-*.whl"))
    if not whl: raise Failed(f"no wheel of version {cfg()['version']} in dist/: run `python tools/test_user_env.py build` first")
    return whl[-1]


def build():
    v = cfg()['version']
    if not re.search(rf'^## {re.escape(v)}\b', (ROOT / 'CHANGELOG.md').read_text(), re.M):
        raise Failed(f"CHANGELOG.md has no '## {v}' section for the version in settings.ini: describe the release there")
    shutil.rmtree(DIST, ignore_errors=True)
    ENVS.mkdir(parents=True, exist_ok=True)
    log = ENVS / 'build.log'; log.write_text('')
    with Step('python -m build (sdist, then the wheel from it)'): sh([sys.executable, '-m', 'build', '--outdir', DIST, ROOT], log, cwd=ROOT)
    files = sorted(DIST.iterdir())
    with Step('twine check --strict'): sh([sys.executable, '-m', 'twine', 'check', '--strict', *files], log)
    import zipfile
    with zipfile.ZipFile(wheel()) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith('.dist-info/METADATA'))).decode()
        names = z.namelist()
    deps = [Requirement(l.split(':', 1)[1]) for l in meta.splitlines() if l.startswith('Requires-Dist:')]
    pinned = [str(r) for r in deps if any(s.operator in ('==', '===') for s in r.specifier) and 'extra == "dev"' not in str(r.marker)]
    if pinned: raise Failed(f"the wheel pins exact versions, which would replace a user's: {pinned}; put ranges in "
                            "settings.ini `requirements` and the exact versions in tools/constraints.txt")
    print(f"  built {', '.join(f.name for f in files)}; {sum(n.endswith('.py') for n in names)} modules in the wheel")


def versions(py):
    "{name: version} of everything installed for `py`"
    code = 'import importlib.metadata as m, json; print(json.dumps({d.metadata["Name"].lower().replace("_", "-"): d.version for d in m.distributions()}))'
    return json.loads(subprocess.run([py, '-c', code], capture_output=True, text=True, check=True).stdout)


def show(v, what):
    print(f"  {what}: " + ', '.join(f'{n} {v[n]}' for n in SHOWN if n in v), flush=True)


def held_same(before, after, what, names):
    changed = {n: (before[n], after.get(n)) for n in names if n in before and before[n] != after.get(n)}
    if changed:
        raise Failed(f"{what} changed versions the environment already had: " +
                     ', '.join(f'{n} {a} -> {b}' for n, (a, b) in changed.items()) +
                     "; loosen the requirement that forces this in settings.ini `requirements` (and say why in a comment if a cap is needed)")


# what must hold right after `pip install` of the wheel alone; run in the venv, from a folder outside the repository
IMPORTS = r'''
import importlib, io, json, pkgutil, subprocess, sys, contextlib
import mixup_nbdev
lib, version, quiet, hint = sys.argv[1:5]
problems = []
if 'site-packages' not in mixup_nbdev.__file__: problems.append(f'mixup_nbdev was imported from {mixup_nbdev.__file__}, not from the wheel')
if mixup_nbdev.__version__ != version: problems.append(f'mixup_nbdev.__version__ is {mixup_nbdev.__version__!r}, settings.ini says {version!r}')
mods = [m.name for m in pkgutil.walk_packages(mixup_nbdev.__path__, 'mixup_nbdev.')]
for m in mods:
    try: importlib.import_module(m)
    except Exception as e: problems.append(f'import {m} failed: {type(e).__name__}: {e}')
# importing ours prints nothing beyond what importing the fastai it builds on prints (fastai's own warnings)
out = lambda m: subprocess.run([sys.executable, '-c', f'import {m}'], capture_output=True, text=True)
r, base = out(quiet), out('fastai.basics')
ours = [l for l in (r.stdout + r.stderr).splitlines() if l not in (base.stdout + base.stderr).splitlines()]
if r.returncode or ours: problems.append(f'import {quiet} printed (exit {r.returncode}): {ours[-20:]!r}')
noise = (base.stdout + base.stderr).strip()
try: import skimage
except ImportError:  # the example datasets need the `examples` extra, and say so
    try: from mixup_nbdev import data
    except Exception: data = None  # reported above
    for f, kw in (('photos_dls', {}), ('shapes_seg', dict(n=1))) if data else ():
        try: getattr(data, f)(**kw); problems.append(f'data.{f}() worked without scikit-image')
        except ImportError as e:
            if hint not in str(e): problems.append(f'data.{f}() without scikit-image: {e!r} does not say {hint}')
        except Exception as e: problems.append(f'data.{f}() without scikit-image raised {e!r}, not an ImportError that says {hint}')
print(json.dumps(dict(modules=mods, problems=problems, noise=noise)))
'''


def user_env(kind):
    env_dir = ENVS / kind
    shutil.rmtree(env_dir, ignore_errors=True)
    ENVS.mkdir(parents=True, exist_ok=True)
    log = ENVS / f'{kind}.log'; log.write_text('')
    py, pip = env_dir / 'bin' / 'python', [env_dir / 'bin' / 'python', '-m', 'pip']
    whl = wheel()
    base = HELD if kind == 'newest' else lower_bounds('requirements')
    with Step('fresh venv'): venv.create(env_dir, with_pip=True)
    with Step(f"pip install {' '.join(base)}"): sh([*pip, 'install', '--upgrade', *base], log)
    before = versions(py)
    show(before, 'installed first')
    with Step(f'pip install {whl.name}'): sh([*pip, 'install', whl], log)
    after = versions(py)
    held_same(before, after, f'`pip install {whl.name}`', HELD + [r.name.lower() for r in reqs('requirements')])
    with tempfile.TemporaryDirectory() as tmp, Step('import every module (no scikit-image yet)'):
        r = subprocess.run([py, '-c', IMPORTS, cfg()['lib_name'], cfg()['version'], MUST_IMPORT_QUIETLY, EXAMPLES_HINT],
                           cwd=tmp, capture_output=True, text=True)
        if r.returncode: raise Failed(f'the import check crashed:\n{r.stdout}{r.stderr}')
        res = json.loads(r.stdout.splitlines()[-1])
        print(f"  imported {len(res['modules'])} modules: {' '.join(res['modules'])}")
        if res['noise']: print(f"  (importing fastai.basics itself prints: {res['noise'][:300]!r})")
        if res['problems']: raise Failed('with the runtime requirements alone:\n    ' + '\n    '.join(res['problems']))
    # the test-only dependencies, with what is installed held: a test tool must not change what is tested
    extras = (lower_bounds('examples_requirements') if kind == 'oldest' else [str(r) for r in reqs('examples_requirements')]) \
             + [str(r) for r in reqs('test_requirements')]
    hold = ENVS / f'{kind}-held.txt'
    hold.write_text(''.join(f'{n}=={after[n]}\n' for n in after if n != cfg()['lib_name'].replace('_', '-')))
    with Step(f"pip install {' '.join(extras)} (the rest held)"):
        sh([*pip, 'install', '-c', hold, f"{whl}[examples]", *extras], log)
    final = versions(py)
    held_same(after, final, 'installing the test-only dependencies', HELD)
    for dev in ('nbdev', 'execnb'):
        if dev in final: raise Failed(f'{dev} got into the user environment (through {log.relative_to(ROOT)}); the notebooks must run without it')
    show(final, 'tested with')
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg', 'PYTHONWARNINGS': 'ignore'}
    env.pop('VIRTUAL_ENV', None)
    env['PATH'] = f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}"
    with tempfile.TemporaryDirectory() as tmp, Step('mixup_nbdev_train --epochs 1'):
        r = subprocess.run([env_dir / 'bin' / 'mixup_nbdev_train', '--epochs', '1'], cwd=tmp, env=env, capture_output=True, text=True)
        lines = [l.strip() for l in (r.stdout + r.stderr).replace('\r', '\n').splitlines() if l.strip() and '█' not in l]
        print('    ' + '\n    '.join(lines[-4:]))
        if r.returncode: raise Failed(f'mixup_nbdev_train --epochs 1 failed (exit {r.returncode})')
    with Step('every notebook (tools/run_notebooks.py)'):
        r = subprocess.run([py, ROOT / 'tools' / 'run_notebooks.py'], cwd=ROOT, env=env)
        if r.returncode: raise Failed('a notebook failed in this environment (see above)')
    shutil.rmtree(env_dir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('what', nargs='*', choices=['build', 'newest', 'oldest'], default=['build', 'newest', 'oldest'])
    a = ap.parse_args()
    failed = []
    for what in a.what:
        print(f'== user environment: {what}', flush=True)
        t0 = time.time()
        try: build() if what == 'build' else user_env(what)
        except Failed as e: failed.append(what); print(f'FAIL ({what}): {e}', flush=True)
        print(f'== {what}: {"failed" if what in failed else "passed"} in {time.time() - t0:.0f}s', flush=True)
    return 1 if failed else 0


if __name__ == '__main__': sys.exit(main())
