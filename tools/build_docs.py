"""Build the docs site into _docs/: nbdev's notebook processing (as `nbdev_docs`), then Quarto, or smalldocs offline.

Run by tools/build_docs.sh. With `quarto` on the PATH (and DOCS_OFFLINE unset) the site is rendered by Quarto, as
`nbdev_docs` does; otherwise by smalldocs, in pure Python, with no internet. Notebooks are not run: their stored
outputs are shown. Like `nbdev_docs`, nbdev's processing runs only the exported cells and the import cells, so that
`show_doc` can make the API entries; a cell that mixes imports with other code would be run too, so it is an error.
Stored outputs are tidied as a terminal or Jupyter would show them: progress bars are reduced to their last state, and
warnings that third-party packages printed on import (with this machine's paths) are left out.
"""
import json, os, re, shutil, subprocess, sys, time
from pathlib import Path

import nbdev.quarto as nq
from nbdev.config import get_config


def code_cells_run_by_docs():
    "Cells that nbdev's docs processing would run besides exports, imports and `show_doc`: imports mixed with code."
    import ast
    from nbdev.doclinks import nbglob
    from nbdev.process import NBProcessor
    from nbdev.processors import _ast_contains
    bad = []
    for f in nbglob(as_path=True).sorted():
        for c in NBProcessor(f, rm_directives=False).nb.cells:
            if c.cell_type != 'code' or not c.source or c.directives_.keys() & {'export','exports','exporti','exec_doc'}: continue
            if c.directives_.get('eval:', [''])[0].lower() == 'false' or 'nbdev_export()' in c.source: continue
            try: trees = c.parsed_()
            except SyntaxError: continue
            if trees and _ast_contains(trees, (ast.Import, ast.ImportFrom)) and _ast_contains(trees, (ast.Expr, ast.Assign, ast.With, ast.For)):
                bad.append(f"{f.relative_to(get_config().config_path)} cell {c.idx_}: {c.source.splitlines()[0]}")
    return bad


def use_quarto(): return bool(shutil.which('quarto')) and not os.environ.get('DOCS_OFFLINE')


def process(n_workers=2):
    "nbdev's `_pre_docs` (nbdev.yml, _modidx.py, _proc/), without its attempt to install Quarto. The sidebar is nbs/_quarto.yml's."
    nq._ensure_quarto = lambda: None  # it would try `sudo` and then `pip install -e .`
    # force: nbdev's cache compares notebooks with the time of the last build, so a notebook saved during a build stays stale
    cache, cfg, path = nq._pre_docs(n_workers=n_workers, force=True)
    return cache, cfg


WARNING = re.compile(r'^\S+\.py:\d+: \w*Warning: ')
BAR = re.compile(r'\|[█-]{10,}\||^\s*Epoch \d+/\d+ :\s*$')

def tidy_stream(text):
    "What a terminal shows of `text`: each line's last `\\r` segment, without progress bars or site-packages warnings."
    out, lines = [], text.split('\n')
    i = 0
    while i < len(lines):
        segs = [x for x in lines[i].split('\r') if x.strip()]
        line = segs[-1].rstrip() if segs else ''
        if WARNING.match(line) and '/site-packages/' in line:
            i += 2 if i + 1 < len(lines) and lines[i+1][:1].isspace() else 1  # the warning and the source line it quotes
            continue
        i += 1
        if segs and (BAR.search(line) or not line.strip('█ ')): continue
        out.append(line)
    return re.sub(r'\n{3,}', '\n\n', '\n'.join(out)).strip('\n') + ('\n' if text.endswith('\n') else '')


def tidy_outputs(cache):
    "Apply `tidy_stream` to the stream outputs of the processed notebooks, dropping those left empty."
    for f in Path(cache).rglob('*.ipynb'):
        nb = json.loads(f.read_text())
        changed = False
        for c in nb['cells']:
            outs = []
            for o in c.get('outputs', []):
                if o.get('output_type') == 'stream':
                    text = ''.join(o['text']) if isinstance(o['text'], list) else o['text']
                    new = tidy_stream(text)
                    if new != text: changed = True; o['text'] = new
                    if not new.strip(): continue
                outs.append(o)
            if 'outputs' in c: c['outputs'] = outs
        if changed: f.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')


def patch_smalldocs():
    "Honour nbdev's `output-file` front matter (00_mixup.ipynb -> mixup.html), as Quarto does."
    from smalldocs import site
    read = site.Site.read
    def _read(self, src):
        page = read(self, src)
        name = page.front.pop('output-file', None)
        if name: page.out = src.parent / str(name)
        return page
    site.Site.read = _read
    return site


def render(cache):
    "Render `_proc/` into `_proc/_docs/` with Quarto if it is installed, else smalldocs; returns warnings that point at real problems."
    if use_quarto():
        subprocess.run(['quarto', 'render', '--no-cache'], cwd=cache, check=True)
        return []
    site = patch_smalldocs().build(cache, quiet=True)
    # keys that only Quarto reads (keep-md, the commonmark format) are not problems
    return [w for w in site.warnings if not re.search(r'keep-md|format commonmark|output-file', w)]


def relink(docs, cfg):
    "Point links to the published site (`doc_host`+`doc_baseurl`, as nbdev writes them) at the local pages."
    base = (cfg.doc_host.rstrip('/') + '/' + cfg.doc_baseurl.strip('/')).rstrip('/') + '/'
    pat = re.compile(r'href="' + re.escape(base) + r'([^"#?]*)')
    for f in docs.rglob('*.html'):
        up = '../' * (len(f.relative_to(docs).parts) - 1)
        text = f.read_text()
        new = pat.sub(lambda m: f'href="{up}{m[1] or "index.html"}', text)
        if new != text: f.write_text(new)


def drop_remote_imports(docs):
    "Drop the theme's `@import` of web fonts: the site must work offline (the font falls back to the system's sans-serif)."
    for f in (docs/'site_libs').rglob('*.css'):
        text = f.read_text()
        new = re.sub(r'@import\s+url\((["\']?)https?://[^)]*\1\)\s*;?', '', text)
        if new != text: f.write_text(new)


def main():
    t0 = time.time()
    shutil.rmtree(get_config().doc_path, ignore_errors=True)  # a failed build leaves no stale site behind
    bad = code_cells_run_by_docs()
    if bad:
        print("These cells mix imports with other code, so nbdev would run them while building the docs "
              "(it runs every cell with an import). Put the imports in a cell of their own:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1
    cache, cfg = process()
    tidy_outputs(cache)
    problems = render(cache)
    docs = cfg.doc_path
    shutil.rmtree(docs, ignore_errors=True)
    shutil.move(str(cache/docs.name), str(docs))
    if not use_quarto():
        relink(docs, cfg)
        drop_remote_imports(docs)
    pages = sorted(p.relative_to(docs).as_posix() for p in docs.rglob('*.html') if 'site_libs' not in p.parts)
    print(f"built with {'Quarto' if use_quarto() else 'smalldocs'}: {len(pages)} pages into {docs.relative_to(cfg.config_path)}/ in {time.time()-t0:.0f}s: {' '.join(pages)}")
    for w in problems: print(f"warning: {w}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == '__main__': sys.exit(main())
