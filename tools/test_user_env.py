"""Install the package as a user does, into fresh environments, and test it there: no nbdev, no development pins.

Usage: python tools/test_user_env.py [build|newest|oldest ...]   (default: all three, in that order)

- build:  `python -m build` makes the sdist and, from it, the wheel in dist/; `twine check --strict` checks both, the
          wheel's requirements hold no exact pin, and CHANGELOG.md describes settings.ini's version.
- oldest: the core as a user of plain PyTorch gets it, at the lower bounds: a fresh venv gets exactly the lower bounds
          of settings.ini `requirements` (`>=` read as `==`) and the torchvision of that torch, then the wheel alone;
          fails if the wheel changed any of their versions or brought what the `fastai` extra brings (fastai,
          fastcore, matplotlib, scikit-learn, scipy, pandas), or if `pip check` fails. Every module of the core
          imports; each module of the fastai layer (`fastai_modules` of tools/run_notebooks.py) raises an ImportError
          that says `pip install "mixup_nbdev[fastai]"`, and so does `mixup_nbdev_train`; a batch mixes with
          `mixup_batch` and `cutmix_batch`. Then the `examples` extra and settings.ini `test_requirements` are added
          (what is installed held, fastcore and matplotlib at the `fastai` extra's lower bounds, no fastai) and the
          torch layer's notebooks run (tools/run_notebooks.py --layer torch). Then the `fastai` extra at its lower
          bounds (the rest held): every module imports (mixup_nbdev.mixup quietly, as in "newest"),
          `mixup_nbdev_train --epochs 1` trains with the MixUp callback: the fastai layer's smoke here, since at its
          lower bounds it differs from the development venv only in torch and numpy (its notebooks run there and in
          "newest").
- newest: a fresh venv gets the newest fastai, fastcore, torch and torchvision that pip can install here, then the
          wheel with its `fastai` extra; fails if that changed any of their versions (the package must fit into the
          environment a user trains in, not replace it). Every module imports; importing mixup_nbdev.mixup prints
          nothing (beyond what importing fastai.basics, which it builds on, prints); without scikit-image the example
          datasets say how to install it (the `examples` extra). Then the `examples` extra and settings.ini
          `test_requirements` are added (what is installed held), `mixup_nbdev_train --epochs 1` trains and the
          fastai layer's notebooks run: every page of the API, and of the tutorials `TUTORIAL_SMOKE` (all of them run in
          the development venv; the torch layer's notebooks run there on the same newest torch, and in "oldest").
In both: `__version__` is settings.ini's version, and nbdev stays out (the notebooks run with nbclient).
Run by tools/test.sh in the development venv (which has build and twine). The venvs are made in _artifacts/user_env/
and removed after a pass (kept after a failure, to look into). pip keeps what it downloads in its cache, so a rerun
installs from disk. Exits 1 on any failure, with what failed and how to fix it.
"""
import argparse, configparser, json, os, re, shutil, subprocess, sys, tempfile, time, venv
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DIST, ENVS = ROOT / 'dist', ROOT / '_artifacts' / 'user_env'
sys.path.insert(0, str(ROOT / 'tools'))
from run_notebooks import fastai_modules, notebooks as all_notebooks

HELD = {'newest': ['fastai', 'fastcore', 'torch', 'torchvision'],  # what a user's training environment already has
        'oldest': ['torch', 'torchvision', 'numpy']}  # a plain PyTorch user's, at the lower bounds
SHOWN = HELD['newest'] + ['fasttransform', 'plum-dispatch', 'numpy', 'matplotlib', 'scikit-learn', 'scikit-image', 'pandas']
NOT_IN_CORE = ['fastai', 'fastcore', 'matplotlib', 'scikit-learn', 'scipy', 'pandas']  # what only the `fastai` extra may bring
MUST_IMPORT_QUIETLY = 'mixup_nbdev.mixup'
# the newest fastai and fastcore: every page of the API; of the tutorials, which use that API at length on real data
# (each runs in the development venv), the one the README's job follows
TUTORIAL_SMOKE = ROOT / 'nbs' / 'tutorials' / 'train.ipynb'
def newest_notebooks(): return [p for p in all_notebooks() if 'tutorials' not in p.parts] + [TUTORIAL_SMOKE]
EXAMPLES_HINT = 'pip install "mixup_nbdev[examples]"'
FASTAI_HINT = 'pip install "mixup_nbdev[fastai]"'


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


def torchvision_for(torch_version:str)->str:
    "The torchvision release made with `torch_version`: torch 2.N.x goes with torchvision 0.(N+15).x (2.9.1: 0.24.1)"
    v = Version(torch_version).release + (0, 0)
    if v[0] != 2: raise Failed(f"settings.ini requirements: torch>={torch_version} is not a torch 2 release; "
                               "say in tools/test_user_env.py torchvision_for which torchvision goes with it")
    return f'0.{v[1] + 15}.{v[2]}'


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


# what must hold after `pip install` of the wheel; run in the venv, from a folder outside the repository
IMPORTS = r'''
import importlib, importlib.util, json, pkgutil, subprocess, sys
import mixup_nbdev
lib, version, quiet, hint, fastai_hint = sys.argv[1:6]
fastai_mods = json.loads(sys.argv[6])  # {module: what of the fastai extra it imports}
has_fastai = importlib.util.find_spec('fastai') is not None
problems, said = [], []
if 'site-packages' not in mixup_nbdev.__file__: problems.append(f'mixup_nbdev was imported from {mixup_nbdev.__file__}, not from the wheel')
if mixup_nbdev.__version__ != version: problems.append(f'mixup_nbdev.__version__ is {mixup_nbdev.__version__!r}, settings.ini says {version!r}')
mods = [m.name for m in pkgutil.walk_packages(mixup_nbdev.__path__, 'mixup_nbdev.')]
for m in mods:
    needs = None if has_fastai else fastai_mods.get(m)
    try: importlib.import_module(m)
    except ImportError as e:
        if needs is None: problems.append(f'import {m} failed: {type(e).__name__}: {e}' + ('' if has_fastai else
                                          ': a module of the core must import with torch and numpy alone (settings.ini requirements)'))
        elif fastai_hint in str(e): said.append(m)
        else: problems.append(f'import {m} without fastai: {type(e).__name__}: {e}, which does not say '
            f'{fastai_hint}: call needs_extra({m!r}) (mixup_nbdev.core) in its import cell, before it imports {needs}')
    except Exception as e: problems.append(f'import {m} failed: {type(e).__name__}: {e}')
    else:
        if needs: problems.append(f'{m} imported without fastai, though it imports {needs}: does it import it only when used? '
                                  'Import it at the top, after needs_extra, so that the module says at once what it needs')
noise = ''
if has_fastai:  # importing ours prints nothing beyond what importing the fastai it builds on prints (fastai's own warnings)
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
print(json.dumps(dict(modules=mods, said=said, problems=problems, noise=noise)))
'''

# a plain PyTorch user's first use of the core: run in the venv, from a folder outside the repository
MIX = r'''
import torch
from mixup_nbdev.functional import mixup_batch, cutmix_batch, mix_loss
x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % 4
for f in (mixup_batch, cutmix_batch):
    m = f(x, y)
    assert m.xb[0].shape == x.shape and m.yb[0].shape == m.yb1[0].shape == y.shape, f'{f.__name__}: {m}'
    loss = mix_loss(torch.nn.functional.cross_entropy, torch.randn(8, 4), m.yb, m.yb1, m.lam)
    assert loss.isfinite(), f'{f.__name__}: the mixed loss is {loss}'
    print(f'{f.__name__}: lam {torch.as_tensor(m.lam).float().mean():.2f}, loss {loss:.2f}')
'''


class UserEnv:
    "A fresh venv in _artifacts/user_env/`kind`, with its pip log"
    def __init__(self, kind):
        self.kind, self.dir = kind, ENVS / kind
        shutil.rmtree(self.dir, ignore_errors=True)
        ENVS.mkdir(parents=True, exist_ok=True)
        self.log = ENVS / f'{kind}.log'; self.log.write_text('')
        self.failed = []  # the layers whose notebooks failed: the next steps still run, so that one run shows every failure
        self.py = self.dir / 'bin' / 'python'
        with Step('fresh venv'): venv.create(self.dir, with_pip=True)
        self.env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg', 'PYTHONWARNINGS': 'ignore'}
        self.env.pop('VIRTUAL_ENV', None)
        self.env['PATH'] = f"{self.dir / 'bin'}{os.pathsep}{self.env['PATH']}"

    def pip(self, *args, name=None, hold=None, extra_constraints=()):
        "pip install `args`; with `hold`, every version installed now (but ours) and `extra_constraints` constrain it"
        # no byte-compiling of everything installed (torch's thousands of modules: ~20 s): a test compiles what it imports
        cmd = [self.py, '-m', 'pip', 'install', '--no-compile', *args]
        if hold is not None:
            now = versions(self.py)
            f = ENVS / f'{self.kind}-{hold}.txt'
            f.write_text(''.join(f'{n}=={now[n]}\n' for n in now if n != cfg()['lib_name'].replace('_', '-')) +
                         ''.join(f'{c}\n' for c in extra_constraints if Requirement(c).name.lower() not in now))
            cmd[5:5] = ['-c', f]
        with Step(name or f"pip install {' '.join(map(str, args))}"): sh(cmd, self.log)
        return versions(self.py)

    def pip_check(self):
        with Step('pip check'): sh([self.py, '-m', 'pip', 'check'], self.log)

    def imports(self, what):
        with tempfile.TemporaryDirectory() as tmp, Step(f'import every module ({what})'):
            r = subprocess.run([self.py, '-c', IMPORTS, cfg()['lib_name'], cfg()['version'], MUST_IMPORT_QUIETLY, EXAMPLES_HINT,
                                FASTAI_HINT, json.dumps(fastai_modules())], cwd=tmp, capture_output=True, text=True, env=self.env)
            if r.returncode: raise Failed(f'the import check crashed:\n{r.stdout}{r.stderr}')
            res = json.loads(r.stdout.splitlines()[-1])
            print(f"  {len(res['modules'])} modules: {' '.join(res['modules'])}")
            if res['said']: print(f"  without fastai, these say {FASTAI_HINT}: {' '.join(res['said'])}")
            if res['noise']: print(f"  (importing fastai.basics itself prints: {res['noise'][:300]!r})")
            if res['problems']: raise Failed(f'with {what}:\n    ' + '\n    '.join(res['problems']))

    def cli(self, *args, fails_with=None):
        "Run mixup_nbdev_train `args` in a scratch folder; it must succeed, or with `fails_with` fail saying that"
        name = f"mixup_nbdev_train {' '.join(args)}".strip()
        with tempfile.TemporaryDirectory() as tmp, Step(name + (' (fails, naming the extra)' if fails_with else '')):
            r = subprocess.run([self.dir / 'bin' / 'mixup_nbdev_train', *args], cwd=tmp, env=self.env, capture_output=True, text=True)
            lines = [l.strip() for l in (r.stdout + r.stderr).replace('\r', '\n').splitlines() if l.strip() and '█' not in l]
            print('    ' + '\n    '.join(lines[-4:] if not fails_with else lines[-1:]))
            if fails_with is None and r.returncode: raise Failed(f'{name} failed (exit {r.returncode})')
            if fails_with is not None and (not r.returncode or fails_with not in r.stdout + r.stderr):
                raise Failed(f'{name} without fastai exited {r.returncode} without saying {fails_with}: mixup_nbdev.train must '
                             "call needs_extra before it imports fastai")

    def notebooks(self, layer, only=()):
        "Run the notebooks of `layer` (tools/run_notebooks.py --layer), or with `only` those of them"
        args = ['--layer', layer, *map(str, only)]
        with Step(f"the {layer} layer's notebooks (tools/run_notebooks.py {' '.join(args)})"):
            r = subprocess.run([self.py, ROOT / 'tools' / 'run_notebooks.py', *args], cwd=ROOT, env=self.env)
            if r.returncode: self.failed.append(layer)

    def done(self):
        "Remove the venv after a pass; keep it after a failure, to look into"
        if self.failed: raise Failed(f"a notebook of the {' and the '.join(self.failed)} layer failed in this environment (see above); "
                                     f"the venv is kept in {self.dir.relative_to(ROOT)} (run one notebook there with "
                                     f"{(self.dir / 'bin' / 'python').relative_to(ROOT)} tools/run_notebooks.py nbs/NAME.ipynb)")
        shutil.rmtree(self.dir, ignore_errors=True)

    def no_dev_tools(self, v):
        for dev in ('nbdev', 'execnb'):
            if dev in v: raise Failed(f'{dev} got into the user environment (through {self.log.relative_to(ROOT)}); the notebooks must run without it')


def newest():
    e, whl = UserEnv('newest'), wheel()
    before = e.pip('--upgrade', *HELD['newest'])
    show(before, 'installed first')
    after = e.pip(f'{whl}[fastai]', name=f'pip install "{whl.name}[fastai]"')
    held_same(before, after, f'`pip install "{whl.name}[fastai]"`',
              HELD['newest'] + [r.name.lower() for r in reqs('requirements') + reqs('fastai_requirements')])
    e.pip_check()
    e.imports('the fastai extra, no scikit-image yet')
    # the test-only dependencies, with what is installed held: a test tool must not change what is tested
    tests = [str(r) for r in reqs('test_requirements')]
    final = e.pip(f'{whl}[examples]', *tests, hold='held', name=f"pip install the examples extra, {' '.join(tests)} (the rest held)")
    held_same(after, final, 'installing the test-only dependencies', HELD['newest'])
    e.no_dev_tools(final)
    show(final, 'tested with')
    e.cli('--epochs', '1')
    e.notebooks('fastai', only=newest_notebooks())
    e.done()


def oldest():
    e, whl = UserEnv('oldest'), wheel()
    base = lower_bounds('requirements')
    torch = next((b.split('==')[1] for b in base if b.startswith('torch==')), None)
    if torch is None: raise Failed("settings.ini requirements name no torch>=: the core needs torch; give its oldest tested release")
    before = e.pip(*base, f'torchvision=={torchvision_for(torch)}')
    show(before, 'installed first')
    after = e.pip(whl, name=f'pip install {whl.name} (no extra)')
    held_same(before, after, f'`pip install {whl.name}`', HELD['oldest'] + [r.name.lower() for r in reqs('requirements')])
    e.pip_check()
    brought = [n for n in NOT_IN_CORE if n in after]
    if brought: raise Failed(f"`pip install {whl.name}` brought {', '.join(brought)}: the core needs torch and numpy alone; "
                             "move what needs them to settings.ini fastai_requirements (the `fastai` extra)")
    e.imports('torch and numpy alone')
    e.cli(fails_with=FASTAI_HINT)
    with tempfile.TemporaryDirectory() as tmp, Step('mix a batch with mixup_batch and cutmix_batch'):
        r = subprocess.run([e.py, '-c', MIX], cwd=tmp, env=e.env, capture_output=True, text=True)
        print('    ' + (r.stdout + r.stderr).strip().replace('\n', '\n    '))
        if r.returncode: raise Failed('mixing a batch with torch and numpy alone failed (see above)')
    # the test-only dependencies, no fastai: what is installed held, what the extras share with them at their lower bounds
    low = lower_bounds('fastai_requirements') + lower_bounds('examples_requirements')
    tests = [str(r) for r in reqs('test_requirements')]
    torch_layer = e.pip(f'{whl}[examples]', *tests, hold='held', extra_constraints=low,
                        name=f"pip install the examples extra, {' '.join(tests)} (the rest held, no fastai)")
    held_same(after, torch_layer, 'installing the test-only dependencies', HELD['oldest'])
    if 'fastai' in torch_layer: raise Failed(f'installing the test-only dependencies brought fastai (see {e.log.relative_to(ROOT)}): '
                                             "the torch layer's notebooks must run without it")
    e.no_dev_tools(torch_layer)
    show(torch_layer, 'the torch layer tested with')
    e.notebooks('torch')
    # then the fastai extra at its lower bounds, all else held
    final = e.pip(*lower_bounds('fastai_requirements'), hold='held-fastai', name=f"pip install {' '.join(lower_bounds('fastai_requirements'))} (the rest held)")
    held_same(torch_layer, final, 'installing the fastai extra', HELD['oldest'])
    e.pip_check()
    show(final, 'the fastai layer tested with')
    e.imports('the fastai extra')
    e.cli('--epochs', '1')
    e.done()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('what', nargs='*', choices=['build', 'newest', 'oldest'], default=['build', 'newest', 'oldest'])
    a = ap.parse_args()
    failed = []
    for what in a.what:
        print(f'== user environment: {what}', flush=True)
        t0 = time.time()
        try: dict(build=build, newest=newest, oldest=oldest)[what]()
        except Failed as e: failed.append(what); print(f'FAIL ({what}): {e}', flush=True)
        print(f'== {what}: {"failed" if what in failed else "passed"} in {time.time() - t0:.0f}s', flush=True)
    return 1 if failed else 0


if __name__ == '__main__': sys.exit(main())
