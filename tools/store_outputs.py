"""Run notebooks and store their outputs, as the docs site shows them: `python tools/store_outputs.py nbs/15_mixup.ipynb ...`

Each notebook runs in its own folder, with execnb's shell (as `nbdev_test` runs it), then `nbdev_clean` tidies it.
Progress bars are turned off (fastprogress's `NO_BAR`), so a fit's output is fastai's results table alone.
"""
import os, sys, subprocess
from pathlib import Path
from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell

PREAMBLE = '''import fastprogress.fastprogress as _fp
_fp.NO_BAR = True
_fp.ConsoleProgressBar.fill = ''  # it prints its fill character once, to check the terminal's encoding
'''

def store(path:Path):
    "Run the notebook at `path` in its folder and write it back with its outputs"
    nb, cwd = read_nb(path), os.getcwd()
    os.chdir(path.parent)
    try:
        sh = CaptureShell()
        sh.run(PREAMBLE)
        sh.run_all(nb, exc_stop=True)
    finally: os.chdir(cwd)
    for c in nb.cells:  # what the preamble's bar-less console bars still print: a lone carriage return
        for o in c.get('outputs', []):
            if o.get('name') == 'stdout': o['text'] = ''.join(o['text']).replace('\r', '').splitlines(keepends=True)
        c['outputs'] = [o for o in c.get('outputs', []) if not (o.get('name') == 'stdout' and not ''.join(o['text']).strip())]
    write_nb(nb, path)

if __name__ == '__main__':
    os.environ.setdefault('MPLBACKEND', 'Agg')
    for p in sys.argv[1:]:
        print('running', p, flush=True); store(Path(p).resolve())
    subprocess.run(['nbdev_clean'], check=True)
